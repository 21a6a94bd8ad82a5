"""Nearest upsampling rewritten as Gathers for ONNX Runtime's INT8 graphs (optimise/upsample.py):
the same outputs as ONNX Runtime's own Resize, bit for bit, at any size."""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from seamline.core.optimise.upsample import nearest_resizes_as_gathers


class Upsampler(nn.Module):
    """A conv, an ``interpolate`` of the given kind, a conv: a decoder's upsampling step."""

    def __init__(self, **interpolate):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)
        self.interpolate = interpolate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kw = dict(self.interpolate)
        if "size" in kw:  # a ratio (num, den) of the input's size, as a skip's shape gives it
            num, den = kw["size"]
            kw["size"] = (x.shape[-2] * num // den, x.shape[-1] * num // den)
        return self.b(nn.functional.interpolate(self.a(x), **kw))


def exported(module: nn.Module) -> onnx.ModelProto:
    """``module`` as ONNX through torch's dynamo exporter, dynamic batch, height and width."""
    example = (torch.rand(2, 3, 32, 48),)
    dynamic = ({0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC,
                3: torch.export.Dim.DYNAMIC},)  # fmt: skip
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
        return torch.onnx.export(program, example, dynamo=True, verbose=False).model_proto


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


SHAPES = [(1, 3, 32, 48), (2, 3, 7, 13), (1, 3, 1, 5), (1, 3, 64, 30)]


NEAREST = pytest.mark.parametrize("interpolate", [
    {"scale_factor": 2, "mode": "nearest"},
    {"size": (2, 1), "mode": "nearest"},  # torch's `size=` (a U-Net's skip), exported as sizes
    {"size": (3, 2), "mode": "nearest"},  # a ratio of 1.5: rows repeat unevenly
    {"scale_factor": 1.7, "mode": "nearest"},
], ids=["scale-2", "size-2x", "size-1.5x", "scale-1.7"])  # fmt: skip


@NEAREST
def test_nearest_resizes_become_gathers_with_bit_identical_outputs(interpolate):
    model = exported(Upsampler(**interpolate))
    assert "Resize" in ops(model)
    rewritten = copy.deepcopy(model)
    assert nearest_resizes_as_gathers(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    assert "Resize" not in ops(rewritten) and "Gather" in ops(rewritten)
    rng = np.random.default_rng(0)
    for shape in SHAPES:  # odd and tiny sizes too: the indices are computed, not assumed
        x = rng.standard_normal(shape).astype(np.float32)
        expected, got = run(model, x), run(rewritten, x)
        assert got.shape == expected.shape
        assert np.array_equal(got, expected), shape


@pytest.mark.parametrize("interpolate", [
    {"scale_factor": 2, "mode": "bilinear"},
    {"scale_factor": 2, "mode": "nearest-exact"},  # half-pixel coordinates: not rewritten
], ids=["bilinear", "nearest-exact"])  # fmt: skip
def test_other_resizes_stay(interpolate):
    model = exported(Upsampler(**interpolate))
    before = model.SerializeToString()
    assert nearest_resizes_as_gathers(model) == 0
    assert model.SerializeToString() == before


@NEAREST
def test_int8_graph_upsamples_channels_last_without_resize_or_extra_transposes(interpolate):
    """In ONNX Runtime's optimised INT8 graph the Gathers sit between the channels-last
    convolutions: no Resize is left and the rewrite adds no Transpose of its own, and the
    quantized outputs equal those of the graph that kept its Resize (the quantizer leaves
    the index arithmetic in float)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = exported(Upsampler(**interpolate))
    rewritten = copy.deepcopy(model)
    nearest_resizes_as_gathers(rewritten)
    rng = np.random.default_rng(1)
    tiles = [rng.standard_normal((1, 3, 32, 48)).astype(np.float32) for _ in range(4)]
    name = model.graph.input[0].name

    class Reader:  # ONNX Runtime's CalibrationDataReader protocol
        def __init__(self):
            self.items = iter([{name: t} for t in tiles])

        def get_next(self):
            return next(self.items, None)

    def int8(proto, tmp):
        src, dst = f"{tmp}/fp32.onnx", f"{tmp}/int8.onnx"
        onnx.save(proto, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)  # fmt: skip
        return onnx.load(dst)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        before, after = int8(model, tmp), int8(rewritten, tmp)
        optimised = {}
        for label, proto in (("before", before), ("after", after)):
            options = ort.SessionOptions()
            options.optimized_model_filepath = f"{tmp}/{label}.opt.onnx"
            ort.InferenceSession(proto.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])  # fmt: skip
            optimised[label] = [n.op_type for n in onnx.load(options.optimized_model_filepath)
                                .graph.node]  # fmt: skip
    assert "Resize" in optimised["before"] and "Resize" not in optimised["after"]
    assert optimised["after"].count("Transpose") <= optimised["before"].count("Transpose")
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype(np.float32)
        assert np.array_equal(run(after, x), run(before, x))
