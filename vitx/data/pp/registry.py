"""The op registry, the op-string parser, per-op seeding and the in-key/out-key mechanism.

A spec such as `"decode|resize(32)|random_crop(28)|flip_lr|value_range(-1, 1)|onehot(10)"` is a
`|`-separated chain of op calls. Each op name refers to a factory registered with `register`
(or `register_key_op`); its arguments are Python literals (positional and keyword), parsed with
`ast`. `get_preprocess_fn` turns a spec into one function on a single example.

Examples are dicts of TensorFlow tensors for ONE example, e.g. `image` of shape
(height, width, channels) and `label` a scalar int. Ops keep every key they do not touch.

Randomness is stateless, so that data are a pure function of (seed, example index) and a
resumed run sees bit-identical batches. Random ops read a per-example seed from the key
`_seed` (int64 tensor of shape (2,)); the function built by `get_preprocess_fn` hands op number
`i` in the chain the seed `stateless_fold_in(_seed, i)`, so no two ops share randomness (not
even two copies of the same op), and removes `_seed` from its result.

Keys: an op made by `register_key_op` reads one tensor and writes one, under keys chosen in the
spec (`resize(32, key="frames")`, or `inkey=` / `outkey=`), as big_vision's `InKeyOutKey`
(big_vision, `big_vision/pp/utils.py`); `key_op` is the one place where an op reads its input
key and writes its output key.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from typing import Any

import tensorflow as tf

Example = dict[str, tf.Tensor]
Op = Callable[[Example], Example]
# fn(x) -> y for a deterministic key op; fn(x, seed) -> y (seed int64 (2,)) for a random one.
TensorFn = Callable[..., tf.Tensor]

SEED_KEY = "_seed"

_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
    """Decorator registering an op factory under `name` for use in spec strings.

    The factory takes the op's (literal) arguments and returns a function mapping one
    example dict to a new example dict.

    Raises:
        ValueError: if `name` is not a Python identifier or is already registered.
    """
    if not name.isidentifier():
        raise ValueError(f"op name={name!r} is not a valid identifier; use e.g. 'my_op'.")

    def decorator(factory: Callable[..., Op]) -> Callable[..., Op]:
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} is already registered; pick another name.")
        _REGISTRY[name] = factory
        return factory

    return decorator


def registered_ops() -> list[str]:
    """Names of all registered ops, sorted."""
    return sorted(_REGISTRY)


def get_key(data: Example, key: str, op: str) -> tf.Tensor:
    """`data[key]`, or a ValueError naming `op`, `key` and the keys the example has."""
    if key not in data:
        raise ValueError(
            f"op {op!r} needs key {key!r} but the example has {sorted(data)}; "
            "check the op order in the pp spec."
        )
    return data[key]


def example_seed(data: Example, op: str) -> tf.Tensor:
    """The example's per-op seed `data["_seed"]` as int64 (2,), or a ValueError naming `op`."""
    if SEED_KEY not in data:
        raise ValueError(
            f"random op {op!r} needs a per-example seed under key {SEED_KEY!r} (int64, shape "
            "(2,)); build datasets with vitx.data.pipeline.build_dataset, which adds it."
        )
    return tf.cast(data[SEED_KEY], tf.int64)


def check_key_names(op: str, *keys: Any) -> None:
    """Raises a ValueError naming `op` unless every key is a non-empty, non-reserved str."""
    for k in keys:
        if not isinstance(k, str) or not k or k == SEED_KEY:
            raise ValueError(f"{op}: key {k!r} must be a non-empty string other than '_seed'.")


def key_op(op: str, inkey: str, outkey: str, fn: TensorFn, *, random: bool = False) -> Op:
    """The op `data -> {**data, outkey: fn(data[inkey])}` (other keys kept, `inkey` too).

    With `random=True` it calls `fn(x, seed)` with the example's seed (int64 (2,), see
    `example_seed`). `op` names the op in the errors.

    Raises:
        ValueError: (when run) the example lacks `inkey`, or a random op finds no `_seed`.
    """

    def apply(data: Example) -> Example:
        x = get_key(data, inkey, op)
        y = fn(x, example_seed(data, op)) if random else fn(x)
        return {**data, outkey: y}

    return apply


def register_key_op(
    name: str, default: str = "image", *, random: bool = False
) -> Callable[[Callable[..., TensorFn]], Callable[..., Op]]:
    """Decorator registering, as op `name`, a factory of a function on ONE tensor.

    The factory takes the op's own arguments and returns `fn(x) -> y` (or `fn(x, seed) -> y`
    with `random=True`). The registered op factory adds three keyword-only arguments, as
    big_vision's `InKeyOutKey` (big_vision, `big_vision/pp/utils.py`):

    - `key`: read and write this key, e.g. `resize(32, key="frames")`;
    - `inkey` / `outkey`: read `inkey`, write `outkey` (each defaults to `default`), e.g.
      `value_range(-1, 1, inkey="video", outkey="video_f32")`.

    Returns the op factory (the decorated name then builds example -> example ops).

    Raises:
        ValueError: (at spec parse) `key` given together with `inkey`/`outkey`, or a key that
            is not a non-empty string other than `_seed`; errors of the factory itself.
    """

    def decorator(factory: Callable[..., TensorFn]) -> Callable[..., Op]:
        @functools.wraps(factory)
        def op_factory(
            *args: Any,
            key: str | None = None,
            inkey: str | None = None,
            outkey: str | None = None,
            **kwargs: Any,
        ) -> Op:
            fn = factory(*args, **kwargs)
            if key is not None and (inkey is not None or outkey is not None):
                raise ValueError(
                    f"{name}: give key={key!r} (read and write one key) or inkey/outkey, "
                    "not both."
                )
            src = key if key is not None else (inkey if inkey is not None else default)
            dst = key if key is not None else (outkey if outkey is not None else default)
            check_key_names(name, src, dst)
            return key_op(name, src, dst, fn, random=random)

        register(name)(op_factory)
        return op_factory

    return decorator


def _parse_op(text: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """`"onehot(10, label_smoothing=0.1)"` -> `("onehot", (10,), {"label_smoothing": 0.1})`."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ValueError(
            f"cannot parse preprocessing op {text!r}; write it as name or name(arg, key=value) "
            "with Python literal arguments."
        ) from None
    if isinstance(node, ast.Name):
        return node.id, (), {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(
            f"cannot parse preprocessing op {text!r}; write it as name or name(arg, key=value)."
        )
    name = node.func.id
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError:
        raise ValueError(
            f"arguments of preprocessing op {name!r} in {text!r} must be Python literals "
            "(numbers, strings, tuples, lists); no names, expressions or **kwargs."
        ) from None
    return name, args, kwargs


def get_preprocess_fn(spec: str) -> Callable[[Example], Example]:
    """Builds the function that applies the `|`-separated ops of `spec` in order.

    Args:
        spec: e.g. `"decode|resize(32)|random_crop(28)|flip_lr|value_range(-1, 1)"`.
            An empty spec gives the identity (minus `_seed`).

    Returns:
        A function on one example dict (tf tensors). If the input has `_seed` (int64,
        shape (2,)), op `i` sees `_seed = stateless_fold_in(_seed, i)`; the output never
        contains `_seed`.

    Raises:
        ValueError: on a malformed op, an unknown op name (the message lists the registered
            ones), or arguments the op's factory rejects.
    """
    if not isinstance(spec, str):
        raise ValueError(f"pp spec={spec!r} must be a string such as 'decode|resize(32)'.")
    ops: list[Op] = []
    parts = [p.strip() for p in spec.split("|")] if spec.strip() else []
    for part in parts:
        if not part:
            raise ValueError(f"pp spec {spec!r} has an empty op; remove the stray '|'.")
        name, args, kwargs = _parse_op(part)
        if name not in _REGISTRY:
            raise ValueError(
                f"unknown preprocessing op {name!r} in pp spec {spec!r}; registered ops: "
                f"{', '.join(registered_ops())}."
            )
        try:
            ops.append(_REGISTRY[name](*args, **kwargs))
        except TypeError as e:
            raise ValueError(f"bad arguments for preprocessing op {part!r}: {e}") from None

    def preprocess(example: Example) -> Example:
        data = dict(example)
        seed = data.pop(SEED_KEY, None)
        for i, op in enumerate(ops):
            if seed is not None:
                data[SEED_KEY] = tf.random.experimental.stateless_fold_in(seed, i)
            data = dict(op(data))
            data.pop(SEED_KEY, None)
        return data

    return preprocess
