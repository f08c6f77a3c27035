"""Paged list calls: page sizes and the page tokens that clients hand back unread.

A token is the URL-safe base64 of the last name on the previous page, so the next page starts
after it in the store's name order, and a name deleted in between does not break the listing.
"""

import base64
import binascii

from server.convert import bounded_int
from store.errors import InvalidArgument
from store.validate import check_tenant_name

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The page size to serve: DEFAULT_PAGE_SIZE for 0; InvalidArgument naming page_size outside 1..MAX_PAGE_SIZE."""
    return bounded_int(requested or DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE, "page_size")


def page_token(last_name: str) -> str:
    return base64.urlsafe_b64encode(last_name.encode()).decode()


def name_after(token: str) -> str:
    """The name a page starts after: "" for the first page; InvalidArgument naming page_token for a token we did not write."""
    if not token:
        return ""
    try:
        name = base64.b64decode(token, altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"page_token: not a token from a previous reply ({exc})") from exc
    return check_tenant_name(name, "page_token")
