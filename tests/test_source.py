"""show_source: the library's code as a chapter shows it."""

import inspect

import pytest

from llm_lib.llama import RMSNorm, format_chat
from llm_lib.source import show_source


def test_listing_is_the_source_in_text_and_a_python_block_in_markdown():
    listing = show_source(RMSNorm)
    assert repr(listing) == inspect.getsource(RMSNorm)
    assert listing._repr_markdown_() == "```python\n" + inspect.getsource(RMSNorm) + "```"


def test_methods_are_dedented_and_several_objects_joined():
    listing = show_source(RMSNorm.forward, format_chat)
    assert listing.source.startswith("def forward(self")
    assert "\n\n\ndef format_chat(" not in listing.source and "\n\ndef format_chat(" in listing.source


def test_objects_without_source_are_refused():
    with pytest.raises(TypeError, match="at least one"):
        show_source()
    with pytest.raises(TypeError, match="cannot show the source of 3"):
        show_source(3)
