"""
QMP data models.

The few structures the QMP specification mandates, as small classes that
validate what the server sent: a missing member raises `KeyError`, a member
of the wrong type raises `TypeError`.
"""

from __future__ import annotations

from collections.abc import Mapping as _AbcMapping
from collections.abc import Sequence as _AbcSequence
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type


class Model:
    """
    Abstract data model, representing some QMP object of some kind.

    :param raw: The raw object to be validated.
    :raise KeyError: If any required fields are absent.
    :raise TypeError: If any required fields have the wrong type.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        if not isinstance(raw, _AbcMapping):
            raise TypeError(
                f"{type(self).__name__} must be a JSON object, "
                f"not {type(raw).__name__}")
        self._raw = raw

    def _member(self, key: str, types: Tuple[Type[Any], ...],
                type_name: str) -> Any:
        """
        Return member ``key`` of the raw object, checking its type.

        :raise KeyError: The member is absent.
        :raise TypeError: The member is not one of ``types``.
        """
        if key not in self._raw:
            raise KeyError(f"'{key}' member is missing from "
                           f"{type(self).__name__}")
        value = self._raw[key]
        if not isinstance(value, types):
            raise TypeError(
                f"'{key}' member of {type(self).__name__} must be "
                f"{type_name}, not {type(value).__name__}")
        return value

    def _asdict(self) -> Dict[str, Any]:
        """Return a plain `dict` copy of the raw object."""
        return dict(self._raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self._raw)!r})"


class Greeting(Model):
    """
    The server's greeting (QMP specification, "Server Greeting").

    :param raw: The raw Greeting object.
    :raise KeyError: If any required fields are absent.
    :raise TypeError: If any required fields have the wrong type.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        self._qmp: Optional[QMPGreeting] = QMPGreeting(
            self._member('QMP', (_AbcMapping,), 'an object'))

    @classmethod
    def _checked(cls, raw: Mapping[str, Any]) -> 'Greeting':
        """
        A greeting from ``raw``, which was checked already (it is a copy
        of one that was): nothing of it is read until it is used, so a
        ``raw`` that decodes itself when first read (an untouched clone of
        a received `Message`) costs only its bytes until then.
        """
        greeting = cls.__new__(cls)
        greeting._raw = raw
        greeting._qmp = None
        return greeting

    @property
    def QMP(self) -> QMPGreeting:  # pylint: disable=invalid-name
        """'QMP' member"""
        qmp = self._qmp
        if qmp is None:
            qmp = self._qmp = QMPGreeting(self._raw['QMP'])
        return qmp

    @QMP.setter
    def QMP(self, qmp: QMPGreeting) -> None:  # pylint: disable=invalid-name
        self._qmp = qmp


class QMPGreeting(Model):
    """
    The 'QMP' member of the server greeting.

    :param raw: The raw QMPGreeting object.
    :raise KeyError: If any required fields are absent.
    :raise TypeError: If any required fields have the wrong type.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        #: 'version' member
        self.version: Mapping[str, Any] = self._member(
            'version', (_AbcMapping,), 'an object')
        capabilities = self._member(
            'capabilities', (_AbcSequence,), 'an array')
        if isinstance(capabilities, (str, bytes)):
            raise TypeError("'capabilities' member of QMPGreeting must be "
                            "an array, not str")
        #: 'capabilities' member
        self.capabilities: Sequence[Any] = capabilities


class ErrorResponse(Model):
    """
    An error reply (QMP specification, "error").

    :param raw: The raw ErrorResponse object.
    :raise KeyError: If any required fields are absent.
    :raise TypeError: If any required fields have the wrong type.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        #: 'error' member
        self.error: ErrorInfo = ErrorInfo(
            self._member('error', (_AbcMapping,), 'an object'))
        #: 'id' member
        self.id: Optional[object] = raw.get('id')


class ErrorInfo(Model):
    """
    The 'error' member of an error reply.

    :param raw: The raw ErrorInfo object.
    :raise KeyError: If any required fields are absent.
    :raise TypeError: If any required fields have the wrong type.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        #: 'class' member, with an underscore to avoid conflicts in Python.
        self.class_: str = self._member('class', (str,), 'a string')
        #: 'desc' member
        self.desc: str = self._member('desc', (str,), 'a string')
