"""Prometheus series of the use cases (the `xacthuc.ports.metrics` ports)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TREE_SIZE = Gauge("xacthuc_audit_tree_size", "Records in the audit log, by platform", ["platform"])
CHECKPOINTS_SIGNED = Counter(
    "xacthuc_audit_checkpoints_signed_total", "Checkpoints signed and stored", ["platform"]
)
CHECKPOINT_REFUSALS = Counter(
    "xacthuc_audit_checkpoint_refusals_total",
    "Checkpoints not signed because the log no longer matches the latest one",
    ["platform"],
)
LEAF_MISMATCHES = Counter(
    "xacthuc_audit_leaf_mismatches_total",
    "Stored records that no longer hash to the leaf hash read earlier",
    ["platform"],
)


class PrometheusLogMetrics:
    def tree_size(self, platform: str, size: int) -> None:
        TREE_SIZE.labels(platform).set(size)

    def checkpoint_signed(self, platform: str) -> None:
        CHECKPOINTS_SIGNED.labels(platform).inc()

    def checkpoint_refused(self, platform: str) -> None:
        CHECKPOINT_REFUSALS.labels(platform).inc()

    def leaf_mismatch(self, platform: str) -> None:
        LEAF_MISMATCHES.labels(platform).inc()
