"""Detection ops: variable-length TFDS objects -> fixed-size padded box and label tensors.

    "decode|value_range(-1, 1)|pad_objects(4)|keep('image', 'boxes', 'box_labels')"

A batch needs fixed shapes, so the N objects of an example (TFDS `objects/bbox` (N, 4) and
`objects/label` (N,)) become M = `max_objects` slots: `boxes` (M, 4) float32 (ymin, xmin,
ymax, xmax) in [0, 1] and `box_labels` (M,) int32, the empty slots holding zero boxes and label
-1 (the validity mask of `vitx.tasks.detection`).
"""

from __future__ import annotations

import tensorflow as tf

from vitx.data.pp.registry import Example, Op, check_key_names, get_key, register


@register("pad_objects")
def pad_objects(max_objects: int, key: str = "objects", boxes_key: str = "boxes",
                labels_key: str = "box_labels") -> Op:
    """`key`/{bbox, label} (N objects) -> `boxes_key` (M, 4) and `labels_key` (M,), M padded.

    Removes `key`. Raises (when built) a ValueError for a `max_objects` that is not a positive
    int; (when run) a ValueError naming `key` when the example has no objects feature, and an
    InvalidArgumentError naming `pad_objects(max_objects)` when an example has more objects.
    """
    if not isinstance(max_objects, int) or isinstance(max_objects, bool) or max_objects < 1:
        raise ValueError(f"pad_objects: max_objects={max_objects!r} must be a positive int "
                         f"(object slots per image)")
    check_key_names("pad_objects", key, boxes_key, labels_key)

    def op(data: Example) -> Example:
        objects = get_key(data, key, "pad_objects")
        if not isinstance(objects, dict) or "bbox" not in objects or "label" not in objects:
            raise ValueError(f"pad_objects: {key!r} is not a dict with 'bbox' and 'label' "
                             f"(TFDS objects); use a dataset with boxes such as digit_scenes")
        bbox = tf.cast(tf.reshape(objects["bbox"], (-1, 4)), tf.float32)
        label = tf.cast(tf.reshape(objects["label"], (-1,)), tf.int32)
        n = tf.shape(label)[0]
        check = tf.debugging.assert_less_equal(
            n, max_objects, message=f"an example has more objects than pad_objects("
                                    f"max_objects={max_objects}); raise max_objects")
        with tf.control_dependencies([check]):
            pad = max_objects - n
        out = {k: v for k, v in data.items() if k != key}
        out[boxes_key] = tf.ensure_shape(tf.pad(bbox, [[0, pad], [0, 0]]), (max_objects, 4))
        out[labels_key] = tf.ensure_shape(tf.pad(label, [[0, pad]], constant_values=-1),
                                          (max_objects,))
        return out

    return op
