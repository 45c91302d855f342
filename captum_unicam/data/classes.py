r"""Classes matched by name, never by position.

A data set's classes are names (class folders, CIFAR's ``label_names``). Two parts of one
data set (``train/`` and ``test/``), or a data set and the class names a checkpoint
records, agree when they hold the same names; label ``i`` then means the same class in
both because both are indexed in one order of names.

- ``class_map={"folder name": "class name", ...}`` renames classes of the data before
  anything is compared (e.g. folders ``0..9`` for classes ``zero..nine``); names it does
  not list are kept.
- ``expected_classes=[...]`` indexes the data in that order (label ``i`` is
  ``expected_classes[i]``): this is how a checkpoint's class names are matched to a data
  folder. A name that is not in both is an error naming the difference.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from captum_unicam.errors import DataSpecError

__all__ = ["order_classes", "class_difference"]


def _check_map(
    class_map: Optional[Mapping[str, str]], names: Sequence[str], where: str
) -> Dict[str, str]:
    if class_map is None:
        return {}
    if not isinstance(class_map, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in class_map.items()
    ):
        raise DataSpecError(
            f"class_map must map class names (str) to new names (non-empty str), got {class_map!r}"
        )
    unknown = sorted(set(class_map) - set(names))
    if unknown:
        verb = "is" if len(unknown) == 1 else "are"
        raise DataSpecError(
            f"class_map renames {unknown}, which {verb} "
            f"not a class of {where} (its classes: {list(names)}); fix class_map"
        )
    return dict(class_map)


def class_difference(a: Sequence[str], b: Sequence[str], second: str) -> str:
    r"""One sentence naming the classes that the reference ``a`` and ``b`` (of
    ``second``) do not share, or ``""`` when they hold the same names.

    Examples::

        >>> class_difference(["cat", "dog"], ["cat", "dgo"], "test/")
        "missing in test/: ['dog']; extra in test/: ['dgo'] (renamed?)"
    """
    missing = [c for c in a if c not in set(b)]
    extra = [c for c in b if c not in set(a)]
    parts = []
    if missing:
        parts.append(f"missing in {second}: {missing}")
    if extra:
        parts.append(f"extra in {second}: {extra}")
    text = "; ".join(parts)
    if missing and extra:
        text += " (renamed?)"
    return text


def order_classes(
    names: Sequence[str],
    *,
    where: str,
    expected_classes: Optional[Sequence[str]] = None,
    class_map: Optional[Mapping[str, str]] = None,
    sort: bool = True,
    expected_from: str = "expected_classes",
) -> Tuple[List[str], Dict[str, int]]:
    r"""The classes of a data set in index order, and each original name's index.

    Args:

        names (sequence of str): the classes the data holds (folder or label names).
        where (str): the data, as named in errors (e.g. ``"'/data/pets/test'"``).
        expected_classes (sequence of str, optional): index the classes in this order.
        class_map (dict, optional): renames ``{name in the data: class name}`` first.
        sort (bool, optional): without ``expected_classes``, sort the (renamed) names
                    (folders); False keeps their order (CIFAR's label_names). Default: True
        expected_from (str, optional): what ``expected_classes`` came from, for errors.

    Returns:
        *(list of str, dict)*: the class names in index order, and ``{original name:
        index}``.

    Raises:
        DataSpecError: class_map names an unknown class or maps two classes to one name;
        ``expected_classes`` is not a list of distinct names; the names differ.
    """
    renames = _check_map(class_map, names, where)
    mapped = [renames.get(n, n) for n in names]
    if len(set(mapped)) != len(mapped):
        dup = sorted({m for m in mapped if mapped.count(m) > 1})
        raise DataSpecError(
            f"class_map gives two classes of {where} the same name {dup}; "
            "map each class to its own name"
        )
    if expected_classes is None:
        classes = sorted(mapped) if sort else list(mapped)
    else:
        if isinstance(expected_classes, str) or not all(
            isinstance(c, str) for c in expected_classes
        ):
            raise DataSpecError(
                f"{expected_from} must be a list of class names (str), got {expected_classes!r}"
            )
        classes = list(expected_classes)
        if len(set(classes)) != len(classes):
            raise DataSpecError(f"{expected_from} names a class twice: {classes}")
        diff = class_difference(classes, mapped, where)
        if diff:
            raise DataSpecError(
                f"the classes of {where} differ by name from {expected_from} {classes}: {diff}; "
                "rename the folders, or pass class_map={'name in the data': 'expected name', ...} "
                "(classes are matched by name, never by position)"
            )
    index = {c: i for i, c in enumerate(classes)}
    return classes, {n: index[m] for n, m in zip(names, mapped, strict=True)}
