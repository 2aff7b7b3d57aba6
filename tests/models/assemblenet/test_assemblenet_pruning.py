"""AssembleNet++ pruning: connection / peer pruning to a smaller loadable graph, load."""

import numpy as np
import pytest
from asn_helpers import B, edit, flat_shapes, init, perturb, set_leaf, tiny_graph, tiny_inputs

from vitx.models import assemblenet as asn
from vitx.utils import npz


# --- pruning -------------------------------------------------------------------------------------
def test_pruning_reproduces_outputs_of_zero_weight_connections(tmp_path):
    x = tiny_inputs()
    m = asn.Model(3, blocks=tiny_graph())
    variables = perturb(init(m, x))
    # a -> c is c's only half-resolution input: pruning it must pin c's fusion size.
    variables = set_leaf(variables, "c/fusion/w_a", -np.inf)   # g = sigmoid(-inf) = 0 exactly
    variables = set_leaf(variables, "c/fusion/w_m", -np.inf)
    variables = set_leaf(variables, "b/fusion/attn_v1/h_v2", -np.inf)  # softmax weight 0
    ref, ref_aux = m.apply(variables, x)
    assert float(ref_aux["connection_weights"]["c"]["a"]) == 0.0
    assert float(ref_aux["peer_weights"]["b"]["v1"][0]) == 0.0

    new_blocks, new_vars = asn.prune_graph(variables, tiny_graph(), threshold=0.01,
                                           peer_threshold=0.01)
    c = next(b for b in new_blocks if b["name"] == "c")
    b = next(b for b in new_blocks if b["name"] == "b")
    assert c["inputs"] == ["v1", "v2", "b"] and c["fuse_scale"] == 2
    assert b["peers"] == {"v1": ["m"], "m": ["v2", "m"]}  # per connection now
    fusion = new_vars["params"]["c"]["fusion"]
    assert not {"w_a", "attn_a", "w_m", "attn_m", "proj_m"} & set(fusion)
    assert "h_v2" not in new_vars["params"]["b"]["fusion"]["attn_v1"]
    assert asn.edge_counts(new_blocks) == {"connections": 8, "attention": 9 + 3 + 15}

    pruned = asn.Model(3, blocks=new_blocks)
    fresh = init(pruned, x)
    assert flat_shapes(fresh) == flat_shapes(new_vars)  # exactly the params the graph needs
    out, aux = pruned.apply(new_vars, x)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(aux["blocks"]["c"], ref_aux["blocks"]["c"])
    out_train, _ = pruned.apply(new_vars, x, train=True, mutable=["batch_stats"])
    ref_train, _ = m.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(out_train[0], ref_train[0])

    # load: the pruned checkpoint, and the unpruned one with from_unpruned.
    npz.save_npz(tmp_path / "pruned.npz", new_vars["params"])
    npz.save_npz(tmp_path / "full.npz", variables["params"])
    loaded = asn.load(fresh["params"], str(tmp_path / "pruned.npz"), {"blocks": new_blocks})
    np.testing.assert_array_equal(pruned.apply({**new_vars, "params": loaded}, x)[0], ref)
    with pytest.raises(ValueError, match="not in model"):
        asn.load(fresh["params"], str(tmp_path / "full.npz"))
    loaded = asn.load(fresh["params"], str(tmp_path / "full.npz"), from_unpruned=True)
    np.testing.assert_array_equal(pruned.apply({**new_vars, "params": loaded}, x)[0], ref)


def test_pruning_bottom_k_dead_blocks_and_last_input():
    x = tiny_inputs()
    graph = edit(c=dict(peers=["v1", "b"]))  # a is an input of c only, not a peer
    m = asn.Model(3, blocks=graph)
    variables = init(m, x)
    for path, w in [("c/fusion/w_a", -5.0), ("c/fusion/w_m", -4.0), ("b/fusion/w_m", -3.0),
                    ("b/fusion/w_v1", -6.0)]:
        variables = set_leaf(variables, path, w)
    new_blocks, new_vars = asn.prune_graph(variables, graph, bottom_k=3)
    names = {b["name"]: b for b in new_blocks}
    # lowest: b<-v1 (-6), c<-a (-5), c<-m (-4); b keeps its last input (m) after losing v1
    assert names["b"]["inputs"] == ["m"] and names["c"]["inputs"] == ["v1", "v2", "b"]
    assert "a" not in names  # no longer an input or peer of anything: removed
    assert "a" not in new_vars["params"] and "a" not in new_vars["batch_stats"]
    out, _ = asn.Model(3, blocks=new_blocks).apply(new_vars, x)
    assert out.shape == (B, 3)

    _, p = asn.prune_graph(variables["params"], graph, threshold=0.2)  # params only
    assert "batch_stats" not in p and "w_m" in p["b"]["fusion"]  # b keeps its best input
    blocks, _ = asn.prune_graph(variables, graph, threshold=0.2)
    assert next(b for b in blocks if b["name"] == "b")["inputs"] == ["m"]
    with pytest.raises(ValueError, match="pass threshold"):
        asn.prune_graph(variables, graph)
    none_model = asn.Model(3, blocks=graph, attention_mode="none")
    with pytest.raises(ValueError, match="need peer-mode params"):
        asn.prune_graph(init(none_model, x), graph, peer_bottom_k=1)


def test_peer_pruning_keeps_a_peer_other_than_the_input():
    x = tiny_inputs()
    m = asn.Model(3, blocks=tiny_graph())
    variables = init(m, x)
    blocks, new_vars = asn.prune_graph(variables, tiny_graph(), peer_bottom_k=100)
    for b in asn.validate_graph(blocks)[3:]:
        for j, ps in b["peers"].items():
            assert len(ps) == 1 and ps[0] != j
    pruned = asn.Model(3, blocks=blocks)
    assert flat_shapes(init(pruned, x)) == flat_shapes(new_vars)
    out, _ = pruned.apply(new_vars, x)
    assert out.shape == (B, 3)
