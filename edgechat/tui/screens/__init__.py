"""Modal screens: model picker, settings, compacted history, rename and delete dialogs."""

from .compaction_view import CompactionView
from .dialogs import ConfirmDelete, RenameDialog
from .model_picker import ModelPicker
from .settings import SettingsScreen

__all__ = ["CompactionView", "ConfirmDelete", "ModelPicker", "RenameDialog", "SettingsScreen"]
