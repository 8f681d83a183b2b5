"""Upload bodies streamed to a temporary file and hashed in the same pass, multipart or raw."""

import hashlib
from typing import BinaryIO

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

# The multipart form's fields besides the file, and the bytes of each (Starlette's defaults).
MAX_FORM_FIELDS = 32
MAX_FIELD_BYTES = 1024 * 1024


class Spool:
    """Writes an upload to a file and hashes it in the same pass."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self._digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        """Hash and append a piece of the upload."""
        self._digest.update(data)
        self.file.write(data)

    def sha256(self) -> str:
        """The hex sha256 of everything written."""
        return self._digest.hexdigest()


class MultipartForm:
    """Reads a multipart body as it streams: the `file` part into a spool, fields in memory.

    Starlette's `request.form()` spools a file through a thread hop per chunk and leaves it to
    be read again for its hash; this writes and hashes in one pass. Its limits are the ones
    `request.form(max_files=1, max_fields=32)` enforced, with the same 400 answers.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.fields: list[tuple[str, str]] = []
        # The `file` part's file name; None until one is read.
        self.filename: str | None = None
        self._files = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        # Where the current part's data goes: the spool, a field's buffer, or nowhere.
        self._target: Spool | bytearray | None = None

    async def read(self, request: Request, content_type: str) -> None:
        """Parse the whole body."""
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise HTTPException(400, "Missing boundary in multipart.")
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except FormParserError:
            raise HTTPException(400, "Invalid multipart data.") from None

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._target = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        options = parse_options_header(self._disposition)[1]
        if b"name" not in options:
            raise HTTPException(
                400, 'The Content-Disposition header field "name" must be provided.'
            )
        self._name = _decoded(options[b"name"])
        if b"filename" not in options:
            if len(self.fields) >= MAX_FORM_FIELDS:
                raise HTTPException(
                    400, f"Too many fields. Maximum number of fields is {MAX_FORM_FIELDS}."
                )
            self._target = bytearray()
            return
        self._files += 1
        if self._files > 1:
            raise HTTPException(400, "Too many files. Maximum number of files is 1.")
        # A file under another name is read past, as request.form() left it unused.
        if self._name == "file":
            self.filename = _decoded(options[b"filename"])
            self._target = self.spool

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if isinstance(self._target, Spool):
            self._target.write(memoryview(data)[start:end])
        elif self._target is not None:
            if len(self._target) + end - start > MAX_FIELD_BYTES:
                raise HTTPException(
                    400, f"Part exceeded maximum size of {MAX_FIELD_BYTES // 1024}KB."
                )
            self._target += data[start:end]

    def _on_part_end(self) -> None:
        if isinstance(self._target, bytearray):
            self.fields.append((self._name, _decoded(bytes(self._target))))


def _decoded(value: bytes) -> str:
    """Form text as UTF-8, or Latin-1 where it is not (as Starlette decodes it)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")
