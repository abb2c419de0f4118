"""Prometheus metrics. Every series is created at start (exported at 0 before its first event)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import __version__
from .errors import FileRejected
from .vocab import REASON_STAGE, TIMED_STAGES, VERDICT_ACTIONS, Reason, Refusal, Result, Signal, Source, Stage, Status

SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PUBLISH_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 5, 10, 30, 60, 300, 1800, 3600)
FILL_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


class Metrics:
    """All of clipwatch's metrics on one registry (a fresh one per instance, so tests do not share state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge("clipwatch_build_info", "clipwatch version", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self.discovered = Counter("clipwatch_files_discovered_total", "Image files seen, by where they were seen",
                                  ["source"], registry=r)
        self.processed = Counter("clipwatch_files_processed_total", "Files handled by the worker, by result",
                                 ["result"], registry=r)
        self.errors = Counter("clipwatch_errors_total", "Failures, by pipeline stage and reason",
                              ["stage", "reason"], registry=r)
        self.queue_depth = Gauge("clipwatch_queue_depth", "Files waiting for the worker", registry=r)
        self.events_dropped = Counter("clipwatch_events_dropped_total",
                                      "File events dropped because the queue was full (a rescan recovers them)",
                                      registry=r)
        self.queue_capacity = Gauge("clipwatch_queue_capacity", "Size of the bounded queue", registry=r)
        self.batch_size = Histogram("clipwatch_batch_size", "Files per batch taken by the worker",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_fill = Histogram("clipwatch_batch_fill_ratio", "Files per batch over model.batch_size",
                                    buckets=FILL_BUCKETS, registry=r)
        self.queue_wait = Histogram("clipwatch_queue_wait_seconds",
                                    "From a change being queued to the worker taking it into a batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.pixel_wait = Counter("clipwatch_model_waiting_for_pixels_seconds_total",
                                  "Time the model thread waited for a batch's files to be read and decoded "
                                  "(high while files are queued: decoding is the bottleneck)", registry=r)
        self.in_flight = Gauge("clipwatch_batch_in_flight", "Changes in the batch the worker is processing now",
                               registry=r)
        self.latency = Histogram("clipwatch_ingest_latency_seconds",
                                 "From a file's change being seen to its row being committed",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.model_calls = Counter("clipwatch_model_calls_total", "Forward passes of the image model", registry=r)
        self.stage_seconds = Histogram("clipwatch_stage_duration_seconds",
                                       "Time spent per batch in each stage (read and decode: summed over the "
                                       "decode threads)",
                                       ["stage"], buckets=SECONDS_BUCKETS, registry=r)
        self.last_commit = Gauge("clipwatch_last_commit_timestamp_seconds",
                                 "Unix time of the last committed batch", registry=r)
        self.store_up = Gauge("clipwatch_store_up", "1 when the last store operation succeeded", registry=r)
        self.verdicts = Counter("clipwatch_verdicts_total", "Images judged duplicate or prohibited, by action and "
                                "by the signal that decided (clip for a reference image or prompt)",
                                ["kind", "action", "signal"], registry=r)
        self.best_match = Histogram("clipwatch_best_match_similarity",
                                    "Cosine similarity of each ingested image to its nearest stored image",
                                    buckets=SIMILARITY_BUCKETS, registry=r)
        self.index_size = Gauge("clipwatch_index_size", "Vectors in the in-memory similarity index", registry=r)
        self.references = Gauge("clipwatch_prohibited_references", "Prohibited reference images and prompts",
                                registry=r)
        self.bank_matches = Counter("clipwatch_bank_matches_total", "Images found in a hash list "
                                    "(prohibited.bank_dir), at ingest and by the pass over stored rows, by bank and "
                                    "signal",
                                    ["bank", "signal"], registry=r)
        self.bank_hashes = Gauge("clipwatch_bank_hashes", "Hashes in each bank as last loaded, by signal",
                                 ["bank", "signal"], registry=r)
        self.bank_loaded = Gauge("clipwatch_bank_last_load_timestamp_seconds", "Unix time each bank was last loaded",
                                 ["bank"], registry=r)
        self.bank_load_seconds = Gauge("clipwatch_bank_load_duration_seconds", "Time the last load of each bank took",
                                       ["bank"], registry=r)
        self.bank_rejected = Counter("clipwatch_bank_lines_rejected_total", "Bank file lines skipped as malformed",
                                     ["bank"], registry=r)
        self.bank_failures = Counter("clipwatch_bank_load_failures_total", "Bank files that could not be read (the "
                                     "bank keeps its previous contents)", ["bank"], registry=r)
        self.sync_success = Gauge("clipwatch_index_sync_last_success_timestamp_seconds",
                                  "Unix time of the last index sync round that reached the store", registry=r)
        self.http_refused = Counter("clipwatch_http_refused_total",
                                    "Requests the HTTP endpoint refused, by why (unauthenticated, throttled, "
                                    "cross_site, off, too_large, busy, too_slow)", ["reason"], registry=r)
        self.decode_workers = Gauge("clipwatch_decode_workers", "Files read and decoded at once (model.decode_workers, "
                                    "or at 0 sized from the measured model and decode costs)", registry=r)
        self.precision = Gauge("clipwatch_model_precision", "1 for the precision the model runs in (fp32, bf16, int8, "
                               "fp16, openvino-int8; model.precision = auto measures which is fastest at start)",
                               ["precision"], registry=r)
        self.searches = Histogram("clipwatch_search_duration_seconds", "Time to answer POST /search",
                                  buckets=SECONDS_BUCKETS, registry=r)
        self.published = Counter("clipwatch_files_published_total",
                                 "Files moved from an incoming directory into watch.publish_dir", registry=r)
        self.publish_latency = Histogram("clipwatch_publish_latency_seconds",
                                         "From a file being complete in incoming (its ctime) to it being published",
                                         buckets=PUBLISH_BUCKETS, registry=r)
        self.incoming = Gauge("clipwatch_incoming_files", "Files in the incoming directories (publish gate): waiting "
                              "to be published, or refused and unchanged since", ["state"], registry=r)
        self.incoming_oldest = Gauge("clipwatch_incoming_oldest_waiting_seconds",
                                     "Age (since its ctime) of the oldest file waiting in incoming", registry=r)
        self.publish_max_wait = Gauge("clipwatch_publish_max_wait_seconds", "watch.publish_max_wait_s when a "
                                      "publish gate is on (the ClipwatchPublishStalled alert's limit)", registry=r)
        for state in ("waiting", "refused"):
            self.incoming.labels(state)
        self.checks = Histogram("clipwatch_check_duration_seconds", "Time to answer POST /check",
                                buckets=SECONDS_BUCKETS, registry=r)
        for refusal in Refusal:
            self.http_refused.labels(refusal)
        for action in VERDICT_ACTIONS:
            for signal in Signal:
                self.verdicts.labels(Status.PROHIBITED, action, signal)
                if signal != Signal.MD5:
                    self.verdicts.labels(Status.DUPLICATE, action, signal)
        for source in Source:
            self.discovered.labels(source)
        for result in Result:
            self.processed.labels(result)
        for stage in TIMED_STAGES:
            self.stage_seconds.labels(stage)
        for reason, stage in REASON_STAGE.items():
            self.errors.labels(stage, reason)

    def running_precision(self, running: str) -> None:
        for name in ("fp32", "bf16", "int8", "fp16", "openvino-int8"):
            self.precision.labels(name).set(1 if name == running else 0)

    def error(self, stage: Stage, reason: Reason) -> None:
        self.errors.labels(stage, reason).inc()

    def rejected(self, exc: FileRejected) -> None:
        self.error(REASON_STAGE[exc.reason], exc.reason)
        self.processed.labels(Result.FAILED).inc()

    def processed_count(self, result: Result) -> int:
        return int(self.registry.get_sample_value("clipwatch_files_processed_total", {"result": result}) or 0)
