r"""Image folders: the walk that finds the images, and the dataset that reads them.

The walk (:func:`scan_folders`) is the one rule for every folder the library reads
(class folders, unlabelled folders, :func:`~captum_unicam.data.check_images`):

- hidden names are skipped, files and folders alike: any dot-name (``.DS_Store``,
  macOS's ``._*`` companions, ``.thumbnails/``) and ``__MACOSX/``;
- only files with an image extension (:data:`IMAGE_EXTENSIONS`) are read; zero-byte
  files are skipped with one warning naming them;
- symbolic links that lead out of the data folder are skipped with one warning naming
  them (``follow_links=True`` follows them); a folder reached twice (a link loop, a
  second link) is read once, with a warning naming the link;
- folders nest at most :data:`MAX_FOLDER_DEPTH` deep; unreadable files and folders are
  a :class:`~captum_unicam.errors.DataSpecError` naming them.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from captum_unicam.data.images import MAX_ASPECT_RATIO, MAX_PIXELS, is_hidden, read_image
from captum_unicam.data.resize import resize_image
from captum_unicam.errors import DataSpecError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FOLDER_DEPTH",
    "ImageFolderDataset",
    "scan_folders",
    "class_folders",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Folders nested deeper than this below a class folder are refused (a bound on the walk).
MAX_FOLDER_DEPTH = 32


def unreadable_folder(path: str, err: OSError) -> DataSpecError:
    if isinstance(err, PermissionError):
        return DataSpecError(
            f"cannot read the folder {path!r}: permission denied; fix its permissions "
            "(e.g. chmod a+rx) or remove it"
        )
    return DataSpecError(f"cannot read the folder {path!r} ({err.strerror or err}); check it")


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


class _Walk:
    """One walk over the folders of one data set, with its warnings gathered so that each
    kind is given once."""

    def __init__(self, root: str, follow_links: bool) -> None:
        self.root_real = os.path.realpath(root)
        self.follow_links = follow_links
        self.outside: List[Tuple[str, str]] = []
        self.empty: List[str] = []
        self.unreadable: List[str] = []
        self.duplicates = 0
        self.seen_files: set = set()

    def leaves_root(self, entry: os.DirEntry) -> bool:
        if self.follow_links or not entry.is_symlink():
            return False
        real = os.path.realpath(entry.path)
        if _inside(real, self.root_real):
            return False
        self.outside.append((entry.path, real))
        return True

    def warn(self) -> None:
        if self.outside:
            named = ", ".join(f"{p!r} -> {r!r}" for p, r in self.outside[:5])
            more = f" and {len(self.outside) - 5} more" if len(self.outside) > 5 else ""
            warnings.warn(
                f"image folder {self.root_real!r}: skipped {len(self.outside)} symbolic link(s) "
                f"that lead out of the data folder: {named}{more}; copy the files in, or pass "
                "follow_links=True to read them",
                UserWarning,
                stacklevel=4,
            )
        if self.empty:
            more = f" and {len(self.empty) - 3} more" if len(self.empty) > 3 else ""
            warnings.warn(
                f"image folder {self.root_real!r}: skipped {len(self.empty)} empty (zero-byte) "
                f"file(s): {', '.join(map(repr, self.empty[:3]))}{more}",
                UserWarning,
                stacklevel=4,
            )
        if self.duplicates:
            warnings.warn(
                f"image folder {self.root_real!r}: {self.duplicates} link(s) to image "
                "files already counted were skipped",
                UserWarning,
                stacklevel=4,
            )
        if self.unreadable:
            raise DataSpecError(
                f"{len(self.unreadable)} image file(s) in {self.root_real!r} cannot be read "
                f"(permission denied), e.g. {self.unreadable[0]!r}; fix their permissions "
                "(e.g. chmod a+r) or remove them"
            )

    def file(self, e: os.DirEntry) -> Optional[str]:
        """The path of an image file entry to read, or None to skip it."""
        if not e.name.lower().endswith(IMAGE_EXTENSIONS) or self.leaves_root(e):
            return None
        try:
            fst = os.stat(e.path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise DataSpecError(
                    f"image {e.path!r} is a symbolic link in a cycle (it leads back to "
                    "itself); remove the link or replace it with the image"
                ) from err
            if isinstance(err, PermissionError):
                self.unreadable.append(e.path)
                return None
            raise DataSpecError(
                f"image {e.path!r} is a symbolic link to {os.readlink(e.path)!r}, which "
                "does not exist; remove the link or restore its target"
                if e.is_symlink()
                else f"cannot read image {e.path!r} ({err.strerror})"
            ) from err
        if not stat.S_ISREG(fst.st_mode):
            warnings.warn(
                f"image folder: skipped {e.path!r}, which is not a regular file",
                UserWarning,
                stacklevel=6,
            )
            return None
        if fst.st_size == 0:  # zero-byte files (PetImages has a few) are no images
            self.empty.append(e.path)
            return None
        key = (fst.st_dev, fst.st_ino)
        if key in self.seen_files:
            self.duplicates += 1
            return None
        self.seen_files.add(key)
        if not os.access(e.path, os.R_OK):
            self.unreadable.append(e.path)
            return None
        return e.path

    def folder_entries(self, folder: str) -> List[os.DirEntry]:
        try:
            return sorted(
                (e for e in os.scandir(folder) if not is_hidden(e.name)), key=lambda e: e.name
            )
        except OSError as err:
            raise unreadable_folder(folder, err) from err

    def scan(self, top: str) -> List[str]:
        """The image files below ``top`` in the order of torchvision's ImageFolder (by
        folder path, then file name). A folder reached again (a loop such as ``ln -s .
        cls/self``, or two links to one folder) is skipped with a warning naming the
        link, so each real file counts once."""
        found: List[Tuple[str, str, str]] = []
        seen_dirs: Dict[tuple, str] = {}
        top_real = os.path.realpath(top)
        pending = [(top, 0)]
        while pending:
            folder, depth = pending.pop()
            if not self._enter(folder, top, top_real, depth, seen_dirs):
                continue
            subdirs: List[tuple] = []
            for e in self.folder_entries(folder):
                try:
                    is_dir = e.is_dir()  # follows symlinks; False for a looping link
                except OSError:
                    is_dir = False
                if is_dir:
                    if not self.leaves_root(e):
                        subdirs.append((e.path, depth + 1))
                    continue
                path = self.file(e)
                if path is not None:
                    found.append((folder, e.name, path))
            pending.extend(reversed(subdirs))  # depth first, in name order
        found.sort(key=lambda t: (t[0], t[1]))
        return [path for _, _, path in found]

    def _enter(self, folder: str, top: str, top_real: str, depth: int, seen_dirs: dict) -> bool:
        try:
            st = os.stat(folder)
        except OSError as e:
            raise unreadable_folder(folder, e) from e
        key = (st.st_dev, st.st_ino)
        real = os.path.realpath(folder)
        above = folder != top and top_real.startswith(real.rstrip(os.sep) + os.sep)
        if key in seen_dirs or above:
            warnings.warn(
                f"image folder: skipped the link {folder!r}: it leads to "
                f"{seen_dirs.get(key, real)!r}, a folder already read or above the class "
                "folder (a symlink loop or a second link), so its images are counted once",
                UserWarning,
                stacklevel=6,
            )
            return False
        seen_dirs[key] = folder
        if depth > MAX_FOLDER_DEPTH:
            raise DataSpecError(
                f"image folder {top!r} nests folders more than {MAX_FOLDER_DEPTH} deep (at "
                f"{folder!r}); flatten it, or check for symlinks that loop"
            )
        return True


def class_folders(folder: str, root: Optional[str] = None, follow_links: bool = False) -> List[str]:
    """Names of the class sub-folders of ``folder`` (sorted; hidden names and links out of
    ``root`` skipped, the latter with a warning)."""
    walk = _Walk(root or folder, follow_links)
    try:
        is_dir = [
            (e.name, e.is_dir()) for e in walk.folder_entries(folder) if not walk.leaves_root(e)
        ]
    except OSError as e:
        raise unreadable_folder(folder, e) from e
    walk.warn()
    return sorted(name for name, d in is_dir if d)


def scan_folders(
    root: str,
    folders: Sequence[Tuple[str, int]],
    *,
    follow_links: bool = False,
    allow_empty: bool = False,
) -> List[Tuple[str, int]]:
    r"""``(path, label)`` of the image files below each ``(folder, label)``, by the rules of
    the module docstring; ``root`` is the data folder that links may not leave.

    Raises:
        DataSpecError: a folder holds no images (unless ``allow_empty``), cannot be read,
        nests too deep, or holds a looping or dangling image link.
    """
    walk = _Walk(root, follow_links)
    samples: List[Tuple[str, int]] = []
    empty: List[str] = []
    for folder, label in folders:
        found = walk.scan(folder)
        if not found:
            empty.append(folder)
        samples += [(p, label) for p in found]
    walk.warn()
    if empty and not allow_empty:
        name = os.path.basename(empty[0].rstrip(os.sep))
        raise DataSpecError(
            f"image folder {os.path.dirname(empty[0].rstrip(os.sep))!r}: the class folder "
            f"{name!r} holds no images; put image files ({', '.join(IMAGE_EXTENSIONS)}) in it "
            "or remove it"
        )
    return samples


class ImageFolderDataset(Dataset):
    r"""Images of class folders, read by :func:`~captum_unicam.data.images.read_image`
    and brought to ``image_size`` by the rule ``resize`` (see
    :mod:`captum_unicam.data.resize`).

    Attributes: ``samples`` (``(path, label)``), ``targets``, ``classes`` (names in index
    order), ``class_to_idx``, ``root``, ``preprocessing`` (``{"image_size", "resize",
    "normalize", "augment"}``), ``mean`` / ``std`` when normalised.
    """

    def __init__(
        self,
        root: str,
        samples: Sequence[Tuple[str, int]],
        classes: Sequence[str],
        *,
        image_size: int,
        resize: str,
        augment: bool = False,
        normalize: Optional[Tuple[str, tuple, tuple]] = None,
        max_pixels: int = MAX_PIXELS,
        max_aspect_ratio: float = MAX_ASPECT_RATIO,
    ) -> None:
        self.root = root
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.image_size, self.resize, self.augment = image_size, resize, augment
        self.limits = {"max_pixels": max_pixels, "max_aspect_ratio": max_aspect_ratio}
        self._normalize = None
        if normalize is not None:
            from torchvision import transforms as T

            self.mean, self.std = normalize[1], normalize[2]
            self._normalize = T.Normalize(self.mean, self.std)
        self.preprocessing = {
            "image_size": image_size,
            "resize": resize,
            "normalize": normalize[0] if normalize else "none",
            "augment": augment,
        }

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[Any, int]:
        path, label = self.samples[i]
        x = read_image(path, **self.limits)
        if self.augment:
            from torchvision import transforms as T

            if self.resize == "none":
                resize_image(x, self.image_size, "none", path)  # refuses another size
            x = T.RandomResizedCrop(self.image_size, scale=(0.5, 1.0), antialias=True)(x)
            x = T.RandomHorizontalFlip()(x).clamp_(0.0, 1.0)
        else:
            x = resize_image(x, self.image_size, self.resize, path)
        if self._normalize is not None:
            x = self._normalize(x)
        return x, label
