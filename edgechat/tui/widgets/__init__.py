"""The widgets of the chat screen, named for what the user sees."""

from .chat_log import ChatLog, MessageView
from .conversation_list import ConversationList
from .prompt_input import PromptInput
from .status_bar import StatusBar

__all__ = ["ChatLog", "ConversationList", "MessageView", "PromptInput", "StatusBar"]
