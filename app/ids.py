"""Ids as the API accepts them: integers a database column can hold.

An unbounded integer in a path or body overflows the column inside the driver (a 500):
PostgreSQL's `integer` keys hold 32 bits, SQLite's 64. Bounding ids at validation makes
such a request an ordinary 422 naming the field.
"""

from typing import Annotated

from pydantic import Field

MAX_ID = 2**31 - 1
Id = Annotated[int, Field(ge=0, le=MAX_ID)]
