"""The learned models of the pixel pass, loaded once per process from the wheel
that ships them: PP-OCRv4's text detector (DBNet) and text recogniser (CRNN
with CTC), as packaged in ``rapidocr-onnxruntime`` (Apache-2.0). Nothing is
downloaded: the ONNX files are package data of that wheel, found without
importing it (its ``__init__`` pulls in the rest of RapidOCR, which the node
does not use).

Each session runs on one intra-op thread: the node runs one worker process per
core, and onnxruntime's default (a thread per core in every worker) makes them
fight for the cores.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

MODEL_PACKAGE = "rapidocr_onnxruntime"
DETECTOR_FILE = "ch_PP-OCRv4_det_infer.onnx"
RECOGNISER_FILE = "ch_PP-OCRv4_rec_infer.onnx"


class ModelMissing(RuntimeError):
    """The wheel that ships the models is not installed, or lacks a model file."""


def model_path(name: str) -> Path:
    """Where an ONNX file of the model package lies."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(f"the package {MODEL_PACKAGE} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise ModelMissing(f"{MODEL_PACKAGE} has no model file {name}")
    return path


@functools.cache
def session(name: str):  # type: ignore[no-untyped-def]
    """An onnxruntime session of one model file, one thread, made once per process.
    The CPU memory arena is on: without it every run allocates its activations
    afresh, which cost 25-30% more time; the price is that a worker keeps the
    largest activation it has needed (a big frame's) for its life."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = True
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path(name)), options, providers=["CPUExecutionProvider"])
