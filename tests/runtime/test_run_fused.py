"""``Backend.run_fused``: the whole model in one call gives the per-layer chain's last exit, on ONNX Runtime
(``fused.onnx``) and torch (the full forward); a backend without it says which backend it is."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from conftest import PASSAGES  # noqa: E402

from elma.bench.configs import batch_windows  # noqa: E402
from elma.runtime.backends import Backend  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402

ITEMS = [(q, c) for c, qas in PASSAGES for q, _ in qas][:3]


def _chain_last_exit(rt, ids, mask, types):
    hidden = rt.backend.embed(ids, types)
    for slot in range(rt.num_layers):
        hidden = rt.backend.run_layer(slot, hidden, mask)
    return rt.backend.run_exit(rt.num_layers - 1, hidden, mask)


@pytest.mark.parametrize("kind", ["bundle", "model"])
def test_fused_equals_the_chain_last_exit(kind, tiny_bundles):
    path = tiny_bundles.bundle("bert") if kind == "bundle" else tiny_bundles.model("bert")
    if kind == "model":
        pytest.importorskip("torch")
    with Runtime.open(path) as rt:
        windows = rt.windows(ITEMS)  # three questions of different lengths: a padded batch
        ids, mask, types = batch_windows(windows, rt.pad_id)
        assert ids.dtype == mask.dtype == types.dtype == np.int32
        start, end = rt.backend.run_fused(ids, mask, types)
        ref_start, ref_end = _chain_last_exit(rt, ids, mask, types)
        assert start.shape == end.shape == ids.shape and start.dtype == np.float32
        for i, w in enumerate(windows):  # padding positions are masked to a fill value in both
            n = len(w)
            np.testing.assert_allclose(start[i, :n], ref_start[i, :n], atol=1e-4)
            np.testing.assert_allclose(end[i, :n], ref_end[i, :n], atol=1e-4)


def test_backend_without_a_fused_graph_names_itself():
    class Chainless(Backend):
        name = "chainless"

    z = np.zeros((1, 4), dtype=np.int32)
    with pytest.raises(NotImplementedError, match="chainless backend"):
        Chainless().run_fused(z, z, z)

