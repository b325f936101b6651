"""An ONNX Runtime session over the harness's export, its KV cache kept as OrtValues."""
import os

import numpy as np
import onnxruntime as ort

from common import args, timed

a = args()
so = ort.SessionOptions()
so.intra_op_num_threads = os.cpu_count()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(os.path.join(a.artifact, "model.onnx"), so, providers=["CPUExecutionProvider"])
inputs, outputs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
past_shape = sess.get_inputs()[1].shape


def generate(prompt, n):
    empty = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, past_shape[1], 0, past_shape[3]), np.float32))
    past = [empty] * (len(inputs) - 1)
    ids, out = np.array([prompt], dtype=np.int64), []
    for _ in range(n):
        feed = {"input_ids": ort.OrtValue.ortvalue_from_numpy(ids), **dict(zip(inputs[1:], past))}
        res = sess.run_with_ort_values(outputs, feed)
        token = int(res[0].numpy()[0, -1].argmax())
        out.append(token)
        ids, past = np.array([[token]], dtype=np.int64), res[1:]
    return out


timed(a, generate)
