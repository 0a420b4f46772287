"""The two command-line steps: argument parsing, logging set-up and error handling.

``predict_main`` (``local_prediction.py``, ``stardist-hpc-predict``) and ``segment_main``
(``hpc_prediction.py``, ``stardist-hpc-segment``) parse their arguments and validate the whole
config before they import the stage that does the work, so ``--help`` and bad configs answer at
once (and the HPC step never imports TensorFlow). ``python -m stardist_hpc predict|segment``
runs either.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from . import config as config_module
from .errors import EXIT_BAD_INPUT, UserError

log = logging.getLogger("stardist_hpc")

#: exit code after Ctrl-C, as shells report SIGINT.
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Report:
    """An option that prints what ``runner(config)`` returns (text) instead of running the step.

    Attributes
    ----------
    flag : str
        The option, e.g. ``--plan``.
    help : str
    runner : str
        ``"module:function"`` returning the text to print on stdout.
    """
    flag: str
    help: str
    runner: str

    @property
    def dest(self):
        return self.flag.lstrip("-").replace("-", "_")


def _parser(description, config_help, reports):
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help=config_help)
    # argparse cannot print the usage of an empty group
    exclusive = parser.add_mutually_exclusive_group() if reports else parser
    for report in reports:
        exclusive.add_argument(report.flag, action="store_true", help=report.help)
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config key, e.g. --set prediction.block_shape="
                             "[32,128,128] (repeatable; values are YAML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


class _AsWarning(logging.Filter):
    """Lower a library's ERROR records to warnings, keeping their text."""

    def filter(self, record):
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _setup_logging(verbose):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    # the libraries' own INFO chatter would drown the progress of the pipeline
    for noisy in ("distributed", "tensorflow", "absl", "h5py", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # tifffile logs a damaged file as errors while it parses on; the file is then either read
    # or rejected with the script's own one-line error, which must stay the only ERROR line
    logging.getLogger("tifffile").addFilter(_AsWarning())


def _import(runner):
    module_name, function_name = runner.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_script(argv, *, description, config_cls, runner, config_help="YAML config file",
               reports=()):
    """Parse ``argv``, load the config, call ``runner(config)``; map bad input to exit code 2.

    Parameters
    ----------
    argv : list of str or None
        Command-line arguments (None: ``sys.argv[1:]``).
    description : str
        ``--help`` text.
    config_cls : type
        Frozen config dataclass to validate the YAML into.
    runner : str
        ``"module:function"`` of the stage, imported only after the config is valid.
    reports : sequence of Report
        Options that print a report of the config instead of running the stage.

    Returns
    -------
    int
        Exit code: 0, 2 for bad input, 130 when interrupted.
    """
    args = _parser(description, config_help, reports).parse_args(argv)
    _setup_logging(args.verbose)
    chosen = [report for report in reports if getattr(args, report.dest)]
    try:
        config = config_module.load(config_cls, args.config, args.set)
        if chosen:
            print(_import(chosen[0].runner)(config), flush=True)
        else:
            _import(runner)(config)
    except UserError as e:
        # one line, whatever a library's message quoted inside it holds
        log.error("%s", " ".join(str(e).split()))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to resume")
        return EXIT_INTERRUPTED
    return 0


PREDICT_DESCRIPTION = """\
Block-wise StarDist3D prediction of a large 3D image into a sparse candidate file.

Streams the image block by block through a trained StarDist3D model and appends the candidates
(prob, dist, points) of each block to an HDF5 file that the HPC step consumes. Memory is
bounded by prediction.block_shape, not by the image size.

Example: python local_prediction.py local_template.yaml --set prediction.block_shape=[32,128,128]
"""

SEGMENT_DESCRIPTION = """\
Distributed NMS and labeling of StarDist3D candidates into one uint32 label volume.

Reads the candidate file written by local_prediction.py (or the original pipeline's
probabilities.h5), runs non-maximum suppression tile by tile and renders the kept nuclei chunk
by chunk on a Dask cluster (local processes or SLURM jobs), and writes label.h5.
Rerunning the same command after an interruption resumes from the checkpoints in work_dir.

Example: python hpc_prediction.py hpc_prediction_template.yaml --set cluster.mode=local
"""

#: the HPC step's options that print instead of running.
SEGMENT_REPORTS = (
    Report("--job-script", "print the job script of the SLURM worker jobs (dask-jobqueue's, "
                           "with the site's settings) and exit without submitting anything",
           "stardist_hpc.segment.cluster:job_script"),
    Report("--plan", "print the run's plan (candidates, tiles, chunks, tasks, halo, memory, "
                     "CPU-hours, wall time) from the candidate file's index and exit without "
                     "running", "stardist_hpc.segment.plan:plan_report"),
)


def predict_main(argv=None):
    """The GPU step's command line; returns the exit code."""
    return run_script(argv, description=PREDICT_DESCRIPTION, config_cls=config_module.LocalConfig,
                      runner="stardist_hpc.predict.step:run")


def segment_main(argv=None):
    """The HPC step's command line; returns the exit code."""
    return run_script(argv, description=SEGMENT_DESCRIPTION, config_cls=config_module.HpcConfig,
                      runner="stardist_hpc.segment.step:run", reports=SEGMENT_REPORTS)
