"""Co-SA: cooperative sentiment agents for multimodal sentiment analysis.

Specification: ../shared/spec/cosa.md (issue 6). Built on core_jax. Available so far: ``metrics``,
``losses``, ``data``, ``synthetic``, ``replay`` and ``configs``; the model, training step and CLI
are still to come.
"""
