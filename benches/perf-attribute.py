#!/usr/bin/env python3
"""Attributes `perf script -F comm,ip,sym,dso` samples of wechat-api to the parts of
the callback path (BENCHMARKS.md, "Where a durable callback's CPU goes").

    PERF_OUT=/tmp/perf benches/ab.sh 10 64 1          # AB_BINS: a --profile profiling build
    perf script -i /tmp/perf/NAME.perf.data -F comm,ip,sym,dso | benches/perf-attribute.py

Each sample goes to the first part (in the order of RULES) one of whose names
appears anywhere in its stack; "allocator" and "kernel" say how much of a part's
samples ended there. Shares of the service's own CPU samples: on a shared machine
these hold where absolute rates do not.
"""
import sys, collections
RULES = [
    ("logging", ["telemetry::logs", "tracing_subscriber", "tracing_appender", "tracing_core::event", "escape_controls"]),
    ("metrics", ["metrics_exporter_prometheus", "record_callback", "Stats::observe", "metrics::", "callback_metrics", "quanta::"]),
    ("dispatcher", ["dispatch::Dispatcher", "dispatch::", "claim_entries", "complete_entries", "Sqlite::pending", "Sqlite::complete"]),
    ("decrypt", ["crypto::decrypt", "aes::", "cbc::", "base64::"]),
    ("verify(sha1)", ["crypto::sign", "sha1::"]),
    ("xml parse", ["quick_xml", "AppMessage::parse", "messages::", "CallbackEnvelope"]),
    ("recent keys", ["RecentKeys"]),
    ("store: commit/WAL/fsync", ["sqlite3PagerCommitPhase", "sqlite3WalFrames", "walCheckpoint", "sqlite3WalCheckpoint", "fsync", "fdatasync", "walWriteToLog", "walIndexAppend", "sqlite3BtreeCommitPhase"]),
    ("store: journal insert", ["journal::insert", "sqlite3VdbeExec", "sqlite3_step", "sqlite3Btree", "sqlite3", "rusqlite"]),
    ("store: writer loop/channel", ["writer_loop", "run_group", "Sqlite::submit", "std::sync::mpsc", "oneshot"]),
    ("callback route (rest)", ["routes::callback", "callback::CallbackCredentials", "callback::"]),
    ("actix/http", ["actix_http", "actix_web", "actix_server", "actix_service", "mio::", "tcp_", "sock_", "__sys_", "epoll"]),
    ("tokio runtime", ["tokio::"]),
]
ALLOC = ["mi_", "_mi_", "malloc", "free", "__rust_alloc", "__rust_dealloc", "realloc", "alloc::raw_vec"]
def classify(frames, comm):
    if comm.startswith("wechat-api-log"):
        return "logging"
    joined = frames
    for name, keys in RULES:
        for f in joined:
            if any(k in f for k in keys):
                return name
    if comm.startswith("wechat-api-stor"):
        return "store: other"
    return "other:" + comm
def main():
    total = 0
    cats = collections.Counter()
    threads = collections.Counter()
    alloc = collections.Counter()
    kernel = collections.Counter()
    comm = None; frames = []
    def flush():
        nonlocal total
        if comm is None: return
        total += 1
        c = classify(frames, comm)
        cats[c] += 1
        threads[comm] += 1
        if frames and any(frames[0].startswith(a) or a in frames[0] for a in ALLOC):
            alloc[c] += 1
        if frames and "[kernel" in frames_dso[0]:
            kernel[c] += 1
    frames_dso = []
    for line in sys.stdin:
        if not line.strip():
            flush(); comm = None; frames = []; frames_dso = []
            continue
        if not line.startswith((" ", "\t")):
            flush(); frames = []; frames_dso = []
            comm = line.split()[0] if line.split() else "?"
            # comm may contain a space: "actix-server wo"
            comm = line[:16].strip()
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) == 2:
            sym = parts[1]
            dso = sym[sym.rfind("("):] if "(" in sym else ""
            frames.append(sym); frames_dso.append(dso)
    flush()
    print(f"samples: {total}")
    print("| part | share % | of it in the allocator % | of it in the kernel % |")
    print("| --- | ---: | ---: | ---: |")
    for c, n in cats.most_common():
        print(f"| {c} | {100*n/total:.1f} | {100*alloc[c]/total:.1f} | {100*kernel[c]/total:.1f} |")
    print()
    for t, n in threads.most_common():
        print(f"thread {t}: {100*n/total:.1f} %")
main()
