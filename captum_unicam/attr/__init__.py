"""Attribution methods of captum-unicam (Captum ``LayerAttribution`` subclasses)."""

from captum_unicam.attr.unicam import UniCAM, UniCAMWarning

__all__ = ["UniCAM", "UniCAMWarning"]
