"""Co-SA: cooperative sentiment agents for multimodal sentiment analysis.

Specification: ../shared/spec/cosa.md. Built on core_jax; the implementation lands with issue 6.
"""
