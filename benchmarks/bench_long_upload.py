"""Peak memory and time of the Space's handler on a long upload (issue: an hour-long file decoded whole).

    python benchmarks/bench_long_upload.py MODEL_DIR FILE [--max_seconds 30]

Prints the handler's wall time, the process's peak RSS and the largest numpy allocation traced while it ran.
Run it once per code version (it measures the process it runs in).
"""

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces" / "audio-tagger"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a saved tagger directory")
    parser.add_argument("file", help="a long audio file")
    parser.add_argument("--max_seconds", type=float, default=30.0, help="the Space's HF_AUDIOREP_MAX_SECONDS")
    args = parser.parse_args()
    import app

    settings = app.TaggerSettings(model_ids=(args.model,), max_seconds=args.max_seconds, max_megabytes=1e4)
    app.load_model(args.model)  # loading the model is not the upload's cost
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    start = time.perf_counter()
    labels, _, message = app.predict(args.file, None, 3, settings=settings)
    seconds = time.perf_counter() - start
    _, traced = tracemalloc.get_traced_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(message.splitlines()[0])
    print(
        f"handler {seconds:.2f} s | peak RSS {peak:.0f} MB (after loading the model: {before:.0f} MB) | "
        f"traced numpy/python peak {traced / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
