"""``python -m stardist_hpc predict CONFIG`` or ``python -m stardist_hpc segment CONFIG``."""
import sys

from .cli import predict_main, segment_main

#: sub-command -> the step's command line.
STEPS = {"predict": predict_main, "segment": segment_main}
USAGE = "usage: python -m stardist_hpc {predict,segment} CONFIG [--set KEY=VALUE ...] [-v]"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STEPS:
        print(USAGE, file=sys.stderr)
        return 2
    return STEPS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
