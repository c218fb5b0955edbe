"""Shared by the Python examples: gRPC stubs generated from proto/ at start,
a call wrapper that retries UNAVAILABLE, and the command-line entry point.

Nothing generated is checked in: `connect` compiles proto/raftmq/v1/*.proto
with grpc_tools into a temporary directory and imports the stubs from there.
"""

import argparse
import atexit
import importlib.resources
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


def generate_stubs() -> None:
    """Compiles proto/raftmq/v1/*.proto with grpc_tools and makes them importable."""
    from grpc_tools import protoc

    out_dir = Path(tempfile.mkdtemp(prefix="raftmq-python-stubs-"))
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "raftmq" / "v1").glob("*.proto"))
    if not protos:
        sys.exit(f"error: no .proto files under {PROTO_ROOT / 'raftmq' / 'v1'}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if code != 0:
        sys.exit(f"error: protoc failed with exit code {code} on {protos}")
    sys.path.insert(0, str(out_dir))


def call(method, request, timeout=10.0, retry_for=15.0):
    """Calls `method`, retrying UNAVAILABLE (no leader yet, e.g. just after a
    queue is created) for up to `retry_for` seconds."""
    import grpc

    deadline = time.monotonic() + retry_for
    while True:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(doc: str, run) -> int:
    """Parses --endpoint, generates the stubs, and calls `run(channel)`.
    Exit code 0 on success, 1 if a call failed, 2 for a usage or setup error."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:7001", help="host:port of any raftmq node (default %(default)s)")
    args = parser.parse_args()
    try:
        import grpc
    except ImportError:
        print("error: grpcio is not installed: pip install -r examples/python/requirements.txt", file=sys.stderr)
        return 2
    generate_stubs()
    try:
        channel = grpc.insecure_channel(args.endpoint)
        grpc.channel_ready_future(channel).result(timeout=10)
        run(channel)
    except grpc.FutureTimeoutError:
        print(f"error: no raftmq node answers at {args.endpoint}; start one with scripts/dev", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    return 0
