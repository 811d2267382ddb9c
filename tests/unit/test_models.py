"""Models: greeting and error validation."""

import pytest

from qemu.qmp.models import ErrorInfo, ErrorResponse, Greeting, Model

GOOD = {'QMP': {'version': {'qemu': {'major': 7}}, 'capabilities': ['oob']}}


def test_greeting_members():
    """A valid greeting exposes QMP.version and QMP.capabilities."""
    greeting = Greeting(GOOD)
    assert greeting.QMP.version == {'qemu': {'major': 7}}
    assert list(greeting.QMP.capabilities) == ['oob']
    assert greeting._asdict() == GOOD
    assert 'Greeting' in repr(greeting)


@pytest.mark.parametrize('raw', [
    {}, {'QMP': {}}, {'QMP': {'version': {}}},
    {'QMP': {'capabilities': []}},
])
def test_greeting_missing_members(raw):
    """A missing member raises KeyError naming it."""
    with pytest.raises(KeyError):
        Greeting(raw)


@pytest.mark.parametrize('raw', [
    {'QMP': 1}, {'QMP': []},
    {'QMP': {'version': 'x', 'capabilities': []}},
    {'QMP': {'version': {}, 'capabilities': 'oob'}},
    {'QMP': {'version': {}, 'capabilities': {}}},
])
def test_greeting_wrong_types(raw):
    """A member of the wrong type raises TypeError."""
    with pytest.raises(TypeError):
        Greeting(raw)


def test_model_requires_mapping():
    """A model of something that is not an object raises TypeError."""
    with pytest.raises(TypeError):
        Model([])  # type: ignore[arg-type]


def test_error_response():
    """An error response exposes error.class_, error.desc and id."""
    resp = ErrorResponse({'error': {'class': 'GenericError', 'desc': 'no'},
                          'id': 7})
    assert resp.error.class_ == 'GenericError'
    assert resp.error.desc == 'no'
    assert resp.id == 7
    assert ErrorResponse({'error': {'class': 'A', 'desc': 'b'}}).id is None


@pytest.mark.parametrize('raw, exc', [
    ({}, KeyError),
    ({'error': 'x'}, TypeError),
    ({'error': {'desc': 'x'}}, KeyError),
    ({'error': {'class': 'x'}}, KeyError),
    ({'error': {'class': 1, 'desc': 'x'}}, TypeError),
    ({'error': {'class': 'x', 'desc': None}}, TypeError),
])
def test_error_response_invalid(raw, exc):
    """Malformed errors raise KeyError or TypeError."""
    with pytest.raises(exc):
        ErrorResponse(raw)


def test_error_info_alone():
    """ErrorInfo validates the 'error' member by itself."""
    assert ErrorInfo({'class': 'C', 'desc': 'd'}).class_ == 'C'
