r"""AssembleNet++-style multi-stream video network with peer attention, on moving_digits.

Source: Ryoo et al., "AssembleNet++: Assembling Modality Representations via Attention
Connections", ECCV 2020 (CN116157804A). Blocks in levels; a block's input is
sum_j sigmoid(w_ji) * (A_j * X_j), the channel-wise attention A_j computed from peer blocks.
Streams (per clip of 8 frames x 32x32): the RGB-like frames (`video`), the exact optical flow
(`flow`) and the per-frame segmentation mask (`mask`, one-hot in the model). The label is the
motion `direction` (8 compass directions), so motion matters.

Command (resumable):

  vitx train --config configs/assemblenet_digits.py --workdir workdirs/assemblenet \
      --config.data_dir=data/tfds

Arguments: `assemblenet_digits.py:streams=video+flow+mask,attention=peer,seed=0,steps=300`
(streams: any '+'-joined subset of video, flow, mask; attention: peer | self | none), quick.

Expected result (test accuracy on `direction`, 300 steps, mean +- std over seeds 0, 1, 2, one
2-core AMD EPYC CPU shared with other jobs; `python scripts/seeds_table.py assemblenet --run`):
  streams=video                       26.0 +- 0.3 %   179 s per run
  streams=video+flow                  52.0 +- 6.1 %   222 s
  video+flow+mask, attention=peer     52.8 +- 6.0 %   221 s   (the default)
  video+flow+mask, attention=self     50.2 +- 2.6 %   235 s
  video+flow+mask, attention=none     51.5 +- 6.8 %   237 s
Chance is 12.5 %. Flow doubles the accuracy; mask and attention mode are within the seed
spread at this budget. The 20-step `:quick` run trains end to end (still near chance).
"""

import os

import ml_collections

from vitx.config import ConfigError, load_config, parse_arg

STREAMS = ("video", "flow", "mask")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: streams=video+flow+mask, attention=peer, seed=0, steps=300, quick."""
    arg = parse_arg(arg, streams="video+flow+mask", attention="peer", seed=0, steps=300,
                    quick=False)
    streams = arg.streams.split("+")
    if not streams or any(s not in STREAMS for s in streams):
        raise ConfigError(f"streams={arg.streams!r}: use a '+'-joined subset of {STREAMS}")
    if arg.attention not in ("peer", "self", "none"):
        raise ConfigError(f"attention={arg.attention!r}: use peer, self or none")
    c = load_config(os.path.join(os.path.dirname(__file__), "vit_digits.py"))
    c.seed = arg.seed
    c.model_name = "assemblenet"
    c.num_classes = 8
    c.model = dict(variant="tiny", graph=dict(streams=list(STREAMS)),
                   streams_off=[s for s in STREAMS if s not in streams],
                   attention_mode=arg.attention)
    c.task = dict(type="classification", inputs=list(STREAMS), labels="label")
    keep = ", ".join(f"'{k}'" for k in (*STREAMS, "label"))
    c.input.dataset = "moving_digits"
    c.input.pp = f"video_value_range(-1,1)|onehot(8, label_smoothing=0.1)|keep({keep})"
    c.input.batch_size = 32
    c.input.shuffle_buffer = 3_000
    c.evals.test.dataset = "moving_digits"
    c.evals.test.pp = f"video_value_range(-1,1)|onehot(8)|keep({keep})"
    # The learned connection / peer weights at each eval: metrics graph/..., and
    # WORKDIR/graph/{graph.png, weights.json, pruned_model.json} (the graph without the 4
    # weakest connections and the 4 weakest peers; `vitx.evaluators.assemblenet_graph`).
    c.evals.graph = dict(type="assemblenet_graph", prune=dict(bottom_k=4, peer_bottom_k=4))
    c.total_steps = 20 if arg.quick else arg.steps
    c.schedule.warmup_steps = 2 if arg.quick else 30
    c.eval_every_steps = 0
    c.checkpoint.every_steps = 100
    c.log_every_steps = 5 if arg.quick else 25
    return c
