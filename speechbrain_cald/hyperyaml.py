"""Writing HyperPyYAML files with a YAML library (ruamel), tags included.

`new("pkg.Class", **kwargs)` is `!new:pkg.Class {kwargs}`, `name(...)` and
`apply(...)` the `!name:` / `!apply:` forms, `ref("key")` is `!ref <key>`;
`dump(mapping, path)` writes a document of them. Used for the
`hyperparams.yaml` of exported inference folders.
"""

import ruamel.yaml
from ruamel.yaml.comments import CommentedMap, Tag, TaggedScalar


def new(target, **kwargs):
    """`!new:<target>` with `kwargs` as its keyword arguments."""
    node = CommentedMap(kwargs)
    node.yaml_set_ctag(Tag(suffix=f"!new:{target}"))
    return node


def ref(name):
    """`!ref <name>`."""
    return TaggedScalar(f"<{name}>", tag="!ref")


def dump(mapping, path, header=None):
    """Write `mapping` (plain values, `new` / `ref` nodes) as YAML to `path`."""
    document = CommentedMap(mapping)
    if header:
        document.yaml_set_start_comment(header)
    yaml = ruamel.yaml.YAML()
    yaml.width = 4096  # one line per scalar: embedded JSON-like configs stay readable
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(document, f)


def load_value(path, key):
    """The plain value of top-level `key` in a HyperPyYAML file, without building its
    objects (tags are read, not applied)."""
    with open(path, encoding="utf-8") as f:
        return ruamel.yaml.YAML(typ="rt").load(f)[key]


def name(target, **kwargs):
    """`!name:<target>` (the callable, with `kwargs` bound)."""
    node = CommentedMap(kwargs)
    node.yaml_set_ctag(Tag(suffix=f"!name:{target}"))
    return node


def apply(target, **kwargs):
    """`!apply:<target>` (the callable's result on `kwargs`)."""
    node = CommentedMap(kwargs)
    node.yaml_set_ctag(Tag(suffix=f"!apply:{target}"))
    return node
