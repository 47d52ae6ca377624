"""Every Prometheus metric of the service, defined once, on a registry of its own (one per app instance).

Base units (seconds, megapixels); labels are bounded: `endpoint` is one of ENDPOINTS or "other", `status` an
HTTP status code, `stage` one of STAGES.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["ENDPOINTS", "LATENCY_BUCKETS", "OVERLAPPED_STAGES", "SEGMENT_STAGES", "STAGES", "Metrics"]

# compose: layer input only. critical: the work's own wall time, decode to encode, which overlapping stages fit in.
STAGES = ("decode", "compose", "thumbnail", "queue", "infer", "render", "encode", "critical")
# Only where a JPEG composite takes the reduced path (app/pipeline.py): decode is then the headers, the reduced
# pass and the mask, and the full-size decode runs beside thumbnail, queue and infer.
OVERLAPPED_STAGES = ("decode_full",)
# Masks without painting only (mask=auto, POST /mask, a plain-photo foreground): U²-Netp on its own threads.
SEGMENT_STAGES = ("segment",)
ENDPOINTS = ("/harmonize", "/curves", "/mask", "/preview", "/healthz", "/readyz", "/metrics", "/info", "/docs",
             "/openapi.json")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)  # 1 ms … 60 s
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
MEGAPIXEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 25, 50, 100)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("s2crnet_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=r)
        self.request_duration = Histogram("s2crnet_request_duration_seconds", "Time to answer a request",
                                          ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_duration = Histogram("s2crnet_stage_duration_seconds", "Time in one stage of a request",
                                        ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("s2crnet_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_depth = Gauge("s2crnet_queue_depth", "Jobs waiting for the inference thread", registry=r)
        self.in_flight = Gauge("s2crnet_in_flight_requests", "/harmonize and /curves requests being served",
                               registry=r)
        self.megapixels = Histogram("s2crnet_image_megapixels", "Size of decoded composites",
                                    buckets=MEGAPIXEL_BUCKETS, registry=r)
        self.model = Info("s2crnet_model", "The model being served", registry=r)
        # export every series from the start, so dashboards never see gaps
        for stage in STAGES + OVERLAPPED_STAGES + SEGMENT_STAGES:
            self.stage_duration.labels(stage)

    @staticmethod
    def endpoint_label(path: str) -> str:
        return path if path in ENDPOINTS else "other"
