"""AssembleNet++: a multi-stream video network whose blocks are fused through peer attention.

Sources:
  * Ryoo, Piergiovanni, Kangaspunta, Angelova, "AssembleNet++: Assembling Modality
    Representations via Attention Connections", ECCV 2020 (arXiv 2008.08072): Sec. 3.1
    (multi-stream block graph, weighted connections, object-segmentation input), Sec. 3.2
    (peer attention: channel-wise attention on a connection computed from *other* blocks, and
    the one-shot softmax search over attention peers, Fig. 2), Sec. 4 (per-frame attention).
  * Seed 002, CN116157804A "Neural network model using peer-to-peer attention": the target
    input is sum_j g(w_ji) * (A_j (.) X_j) (Eqs. (1), (2), reconstructed), A_j =
    sigmoid(FC(GAP(X_com))) (Eq. (3)) with X_com the softmax-weighted sum of the peers' outputs;
    at least one peer other than j (claim 1); inputs and peers only from earlier levels
    (claim 10); fully connected start and pruning by threshold or bottom-k (description: block
    connections and attention connections); RGB / flow / segmentation stems (claims 13-16);
    per-block temporal dilation (claims 17-19).
  * Ryoo et al., "AssembleNet: Searching for Multi-Stream Neural Connectivity in Video
    Architectures", ICLR 2020, Sec. 3 (levels, dilated (2+1)D residual bottlenecks, sigmoid
    connection weights, T kept constant). TF Model Garden's `official/projects/assemblenet/`
    (Keras) is the only public implementation; names and defaults below follow it unless noted.

Modules: `graph` (the typed schema: `GraphSpec`, `StemSpec`, `BlockSpec`, `Connection`,
`AttentionMode`, `ConvType`), `generators` (fully connected / default graphs, `streams_off`,
fixed `connection_weights`), `layers` (SpaceTimeConv, Stem, Bottleneck, PeerAttention, Fusion),
`model` (`AssembleNetConfig`, `Model`, `check_input`), `pruning` (scores, `prune_graph`),
`checkpoint` (`load`).

Graph schema (`blocks`, a list of dicts, parsed into a `GraphSpec` of `StemSpec`s and
`BlockSpec`s with `Connection`s by `GraphSpec.from_blocks`; `validate_graph` returns it as
normalised dicts; `fully_connected_graph` / `default_graph` make one):

    stem (level 1, one or more per stream):
      {"name", "level": 1, "stream": batch key, "channels", "one_hot": K (optional: the stream is
       an integer map (..., 1), one-hot encoded to K channels inside the model), "stride" (1),
       "dilation" (1), "conv" ("(2+1)d"), "kernel" (3)}
    block (level >= 2):
      {"name", "level", "inputs": [names], "peers": [names] or {input: [names]} (per connection),
       "channels", "stride" (1, spatial), "dilation" (1, temporal), "conv" ("(2+1)d" | "3d" |
       "2d"), "num_units" (1), "kernel" (3), "bottleneck" (channels // 4, min 1),
       "weights": {input: p} (optional fixed post-sigmoid connection weights g in [0, 1]),
       "fuse_scale": int (optional; see "Fusion")}

Names are unique, non-empty, without '/', and neither "head" nor "head_proj_*". Level-1 blocks
are stems; every other block takes inputs and attention peers from earlier levels only (level
skipping allowed). The blocks of the highest level feed the head. `streams_off` (a Model
keyword) removes the stems of those streams and every connection / peer from them.

Computation (B batch, T frames, H x W pixels, C channels; T is never strided):

  * stem: [one-hot] -> SpaceTimeConv(stride) -> BatchNorm -> ReLU.
  * block i: fused input -> `num_units` residual bottlenecks (1x1x1 conv, BN, ReLU;
    SpaceTimeConv (stride on the first unit, temporal dilation d), BN, ReLU; 1x1x1 conv, BN with
    zero-initialised scale; shortcut (1x1x1 strided conv + BN when the stride is > 1); add; ReLU).
  * SpaceTimeConv "(2+1)d" (default; Tran et al., CVPR 2018): spatial (1, k, k) conv, BN, ReLU,
    temporal (k, 1, 1) conv with dilation d; "3d": one (k, k, k) conv, temporal dilation d; "2d":
    the spatial conv only. "SAME" padding, so T is kept; a temporal conv's receptive field is
    (k - 1) d + 1 frames.
  * Fusion (into block i with C_i channels):
    X_in_i = sum_j proj_j(pool_j(g(w_ji) * A_j * X_j)) with
      g(w) = sigmoid(w), w a learned scalar per connection initialised 0 (g = 0.5), or g = p
        fixed from the graph ("weights") / `connection_weights`;
      A_j (B, T, 1, 1, C_j), the channel-wise per-frame attention (below), broadcast over H, W;
      pool_j: spatial average pooling by an integer factor down to the fusion size, which is the
        smallest H x W of the inputs (= H0 / fuse_scale for clips of H0 x W0; `fuse_scale`
        pins it, e.g. after pruning the smallest input away);
      proj_j: 1x1x1 conv without bias to C_i when C_j != C_i (the reference projects groups of
        inputs to their largest width and max-pools; vitx projects each input to the *target's*
        width and average-pools, which keeps every parameter shape independent of the other
        connections, so pruning never changes a surviving parameter).
    Sums over connections / peers run in graph order, one add at a time, so a connection or peer
    whose weight is exactly 0 contributes exactly nothing (x + 0 == x).
  * Peer attention (attention_mode="peer"): for connection j -> i with peers K_j (at least one
    k != j): v_k = GAP_hw(X_k) (B, T, C_k), projected by a bias-free Dense to C_i when
    C_k != C_i (one projection per peer and target block, shared by its connections);
    X_com = sum_k softmax(h_j)_k v_k with learned logits h_j (one scalar per peer, init 0);
    A_j = sigmoid(Dense_{C_j}(X_com)) (kernel N(0, 0.01), bias 0). The reference mixes the
    peers at the largest peer width; vitx mixes at C_i (same reason as above).
    attention_mode="self": A_j = sigmoid(Dense_{C_j}(GAP_hw(X_j))) (SE-style, no bottleneck);
    "none": A_j = 1.
  * Head: per final-level block GAP over H, W and mean over T -> (B, C_f); a bias-free Dense to
    D = max C_f where C_f != D; mean over the final blocks -> pre_logits (B, D);
    Dense(num_classes), zero-initialised.

Parameter tree (names are block names; `p` a peer, `j` an input):

    {stem}/st/{spatial,temporal,conv}/kernel, {stem}/st/bn_mid/*, {stem}/bn/{scale, bias}
    {block}/fusion/w_{j} ()                         learned connection logit (not when fixed)
    {block}/fusion/proj_{j}/kernel (1, 1, 1, C_j, C_i)           C_j != C_i
    {block}/fusion/peer_proj_{p}/kernel (C_p, C_i)               peer mode, C_p != C_i
    {block}/fusion/attn_{j}/h_{p} ()                             peer mode
    {block}/fusion/attn_{j}/dense/{kernel (C_i | C_j, C_j), bias (C_j,)}   peer | self mode
    {block}/unit_{u}/{conv1, st, conv3, proj}/..., {bn1, bn2, bn3, bn_proj}/...
    head_proj_{f}/kernel (C_f, D), head/{kernel (D, num_classes), bias}

BatchNorm state (`nn.BatchNorm(use_running_average=not train, momentum=0.9)`, epsilon 1e-5)
lives in the `batch_stats` collection under the same paths (mean, var): initialise with
`model.init(rng, inputs)` -> {"params", "batch_stats"}, train with
`model.apply(variables, inputs, train=True, mutable=["batch_stats"])` -> ((logits, aux),
{"batch_stats": new}), evaluate with `model.apply(variables, inputs)`. Under jit on a sharded
global batch, the statistics are those of the global batch.
"""

from vitx.models.assemblenet.checkpoint import load
from vitx.models.assemblenet.generators import (
    VARIANTS,
    apply_connection_weights,
    apply_streams_off,
    default_graph,
    fully_connected_graph,
)
from vitx.models.assemblenet.graph import (
    ATTENTION_MODES,
    CONV_TYPES,
    AttentionMode,
    BlockSpec,
    Connection,
    ConvType,
    GraphSpec,
    StemSpec,
    edge_counts,
    graph_scales,
    validate_graph,
)
from vitx.models.assemblenet.layers import (
    Bottleneck,
    Fusion,
    PeerAttention,
    SpaceTimeConv,
    Stem,
    pool_frames,
)
from vitx.models.assemblenet.model import AssembleNetConfig, Model, check_input
from vitx.models.assemblenet.pruning import connection_scores, peer_scores, prune_graph

__all__ = [
    "ATTENTION_MODES", "CONV_TYPES", "VARIANTS", "AssembleNetConfig", "AttentionMode",
    "BlockSpec", "Bottleneck", "Connection", "ConvType", "Fusion", "GraphSpec", "Model",
    "PeerAttention", "SpaceTimeConv", "Stem", "StemSpec", "apply_connection_weights",
    "apply_streams_off", "check_input", "connection_scores", "default_graph", "edge_counts",
    "fully_connected_graph", "graph_scales", "load", "peer_scores", "pool_frames", "prune_graph",
    "validate_graph",
]
