"""Prompt templates, topics and category keywords of the DriftSched paper's workload.

The paper (arXiv 2606.02982) generated prompts from 5 templates per category over 59
infrastructure/ML topics and classified them back with a keyword classifier. Templates and
keywords live together here so the workload preset (``data.paper``) and the paper's classifier
(``predictor.paper``) cannot drift apart.
"""

from __future__ import annotations

# category -> base token budget (also the request's max_tokens in the paper's workload)
BASE_BUDGET: dict[str, int] = {"short_qa": 64, "summary": 256, "technical": 384, "report": 512}
CATEGORIES: tuple[str, ...] = tuple(BASE_BUDGET)

TOPICS: tuple[str, ...] = (
    "DNS",
    "BGP",
    "TCP congestion control",
    "TLS handshakes",
    "HTTP/2 multiplexing",
    "QUIC",
    "load balancers",
    "CDNs",
    "Kubernetes",
    "Docker containers",
    "service meshes",
    "etcd",
    "Raft consensus",
    "Paxos",
    "Kafka",
    "RabbitMQ",
    "Redis",
    "PostgreSQL replication",
    "database indexing",
    "LSM trees",
    "B-trees",
    "sharding",
    "consistent hashing",
    "CAP theorem",
    "eventual consistency",
    "distributed tracing",
    "Prometheus",
    "Grafana",
    "log aggregation",
    "autoscaling",
    "serverless functions",
    "infrastructure as code",
    "Terraform",
    "CI/CD pipelines",
    "blue-green deployments",
    "canary releases",
    "rate limiting",
    "circuit breakers",
    "GPU scheduling",
    "CUDA kernels",
    "mixed-precision training",
    "data parallelism",
    "tensor parallelism",
    "pipeline parallelism",
    "gradient checkpointing",
    "the KV cache",
    "PagedAttention",
    "continuous batching",
    "speculative decoding",
    "quantization",
    "FlashAttention",
    "mixture-of-experts models",
    "embedding models",
    "vector databases",
    "retrieval-augmented generation",
    "LoRA fine-tuning",
    "model distillation",
    "inference serving SLOs",
    "tokenization",
)
assert len(TOPICS) == 59, len(TOPICS)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "short_qa": (
        "What is {topic}? Answer in one sentence.",
        "Briefly define {topic}.",
        "In a few words, what does {topic} do?",
        "Quick question: what is the main purpose of {topic}?",
        "Give a one-line answer: why is {topic} used?",
    ),
    "summary": (
        "Summarize how {topic} works in a short paragraph.",
        "Write a brief summary of the key ideas behind {topic}.",
        "Give an overview of {topic} and its main trade-offs.",
        "Summarize the benefits and drawbacks of {topic}.",
        "Provide a concise summary of {topic} for a new engineer.",
    ),
    "technical": (
        "Explain in technical detail how {topic} is implemented, step by step.",
        "Describe the internals and algorithms behind {topic}, with examples.",
        "How would you debug performance problems in {topic}? Explain the technical steps.",
        "Explain how to configure and tune {topic} in production, with code examples.",
        "Walk through the architecture of {topic} and explain each component in depth.",
    ),
    "report": (
        "Write a detailed report on {topic}: history, design, operations and future directions.",
        "Write a comprehensive report comparing approaches to {topic} with recommendations.",
        "Prepare an in-depth incident postmortem report involving {topic}.",
        "Write a thorough design document and report for adopting {topic} at a large company.",
        "Produce a full report analysing the reliability, cost and performance of {topic}.",
    ),
}

# The paper's keyword classifier: the first category (in this order) whose keyword occurs in
# the lower-cased prompt wins; no match -> "summary" (the paper's middle budget). Order matters:
# "report" before "technical" before "summary" before "short_qa" (most specific first).
KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("report", ("report", "comprehensive", "in-depth", "design document", "thorough")),
    (
        "technical",
        (
            "technical",
            "internals",
            "implement",
            "debug",
            "configure",
            "architecture",
            "step by step",
            "code",
        ),
    ),
    ("summary", ("summar", "overview", "brief summary", "benefits and drawbacks")),
    (
        "short_qa",
        (
            "what is",
            "briefly define",
            "in a few words",
            "quick question",
            "one-line",
            "one sentence",
            "define",
        ),
    ),
)
DEFAULT_CATEGORY = "summary"

PREFIX = "Request ID {i}. Tenant {tenant}. Job type {category}. "
"""The paper prefixed every prompt with this; it leaks the label (a switch turns it off)."""
