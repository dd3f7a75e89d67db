"""A second worker on the same machine, started with no options, takes a free web port instead of dying on it."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from deploy.process import free_port
from postlens.settings import Settings
from stream.app import web_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        yield holder.getsockname()[1]


def default_settings(port: int) -> Settings:
    """Settings whose web port is the default, not one the user asked for."""
    return Settings.model_construct(_fields_set=set(), worker_web_port=port)


def test_a_taken_default_port_is_replaced_by_a_free_one(taken_port: int) -> None:
    port = web_port(default_settings(taken_port), None)
    assert port != taken_port
    with socket.socket() as probe:
        probe.bind(("", port))  # free indeed


def test_a_free_default_port_is_used() -> None:
    port = free_port()
    assert web_port(default_settings(port), None) == port


def test_a_port_asked_for_is_used_as_is(taken_port: int) -> None:
    assert web_port(Settings(), taken_port) == taken_port
    assert web_port(Settings(worker_web_port=taken_port), None) == taken_port  # fails loudly when bound, as asked
