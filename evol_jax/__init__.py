"""AgentEvol (AgentGym): JAX text environments, an LLM policy, behavioural cloning and evolution.

Specification: ../shared/spec/agentevol.md. Built on core_jax; lands with issues 7 and 8.
"""
