"""Every public layer's docstring has the house sections and a runnable example.

docs/STYLE.md, "A layer": for each `keras.layers.Layer` subclass that
`tfnegseq.layers` exports (`__all__`), `inspect.getdoc` must contain `Args:`,
`Call arguments:`, `Returns:` and `Example:`, with a ```python fenced block after
`Example:` that names the class. The block, dedented, is executed in a fresh namespace
holding `np` (numpy), `keras`, `ops` (`keras.ops`) and every name of `tfnegseq.layers`,
after `keras.utils.set_random_seed(0)`; it must not raise.

Shape comments: when the block's last statement ends with a comment that is a tuple of
ints, as in `y = layer(x)  # (2, 10, 64)` or `out.shape  # (2, 4)` (the statement may
span several lines; the comment is on its last line), that statement's value is
checked: for an assignment to one plain name (`y = ...`), the variable; for an
expression statement (`out.shape`), the expression's value. Its `tuple(value.shape)`,
or `tuple(value)` when the value is itself a shape (a `TensorShape` or a tuple of ints),
must equal the comment's tuple. Not checked: a value that is a tuple, list or dict of
tensors (e.g. `(pooled, weights)`), a last statement of another form (tuple unpacking,
an augmented assignment) and any other trailing comment (`# entries 0.0 or 2.0`).
"""

from __future__ import annotations

import ast
import inspect
import io
import numbers
import re
import textwrap
import tokenize

import keras
import numpy as np
import pytest
from keras import ops

import tfnegseq.layers as layers_module

NAMES = list(getattr(layers_module, "__all__", None)
             or [n for n in dir(layers_module) if not n.startswith("_")])
LAYERS = sorted(n for n in NAMES
                if isinstance(getattr(layers_module, n), type)
                and issubclass(getattr(layers_module, n), keras.layers.Layer))
SECTIONS = ("Args:", "Call arguments:", "Returns:", "Example:")
BLOCK = re.compile(r"^[ \t]*```python[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
SHAPE_COMMENT = re.compile(r"#\s*(\([\d,\s]*\))\s*$")
RESULT = "__example_result__"


def example(doc: str) -> str:
    """The dedented ```python block of the `Example:` section ("" when there is none)."""
    start = doc.find("Example:")
    match = BLOCK.search(doc, start) if start >= 0 else None
    return textwrap.dedent(match.group(1)) if match else ""


def shape_comment(code: str, line: int):
    """The tuple of a `# (2, 4)` comment at the end of `line` (1-based), else None."""
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.COMMENT and token.start[0] == line:
            match = SHAPE_COMMENT.fullmatch(token.string)
            if match is None:
                return None
            shape = ast.literal_eval(match.group(1))
            assert isinstance(shape, tuple), (
                f"shape comment {token.string!r}: write a 1-tuple as (n,)")
            return shape
    return None


def shape_of(value):
    """`tuple(value.shape)`, or the value itself when it is a shape; None for anything
    else (a tuple / list / dict of tensors, None)."""
    if hasattr(value, "shape"):
        return tuple(value.shape)
    if value is None or isinstance(value, dict):
        return None
    try:
        dims = tuple(value)
    except TypeError:
        return None
    if all(isinstance(d, numbers.Integral) or d is None for d in dims):
        return dims
    return None


def test_layers_found():
    assert len(LAYERS) >= 20, LAYERS


@pytest.mark.parametrize("name", LAYERS)
def test_layer_docstring(name):
    doc = inspect.getdoc(getattr(layers_module, name)) or ""
    missing = [section for section in SECTIONS if section not in doc]
    assert not missing, f"{name}'s docstring lacks {missing}"
    code = example(doc)
    assert code.strip(), f"{name}'s `Example:` has no ```python block"
    assert name in code, f"{name}'s example does not use {name}"

    tree = ast.parse(code, filename=f"<{name} example>")
    last = tree.body[-1]
    expected = shape_comment(code, last.end_lineno)
    if isinstance(last, ast.Expr):  # keep the value of a trailing expression
        tree.body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(RESULT, ast.Store())], value=last.value), last)
        ast.fix_missing_locations(tree)
    namespace = {"np": np, "keras": keras, "ops": ops,
                 **{n: getattr(layers_module, n) for n in NAMES}}
    keras.utils.set_random_seed(0)
    exec(compile(tree, f"<{name} example>", "exec"), namespace)

    if expected is None:
        return
    if isinstance(last, ast.Expr):
        value = namespace[RESULT]
    elif (isinstance(last, ast.Assign) and len(last.targets) == 1
          and isinstance(last.targets[0], ast.Name)):
        value = namespace[last.targets[0].id]
    else:
        return
    shape = shape_of(value)
    if shape is not None:
        assert shape == expected, f"{name}'s example: shape {shape}, comment says {expected}"
