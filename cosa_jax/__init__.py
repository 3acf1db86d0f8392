"""Co-SA: cooperative sentiment agents for multimodal sentiment analysis.

Specification: ../shared/spec/cosa.md (issue 6). Built on core_jax. Modules: ``metrics``,
``losses``, ``data``, ``synthetic``, ``replay``, ``configs``, ``models`` (agents, policy, critic),
``train`` (one jitted actor-critic step, epochs, evaluation), ``main`` (CLI and protocol) and
``demo``.
"""
