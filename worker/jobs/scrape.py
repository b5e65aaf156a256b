"""web.scrape: crawl up to `max_pages` pages of one site from a start URL.

Breadth-first over links on the same scheme, host and port as the start URL
(and, with `prefix`, under the start URL's path). robots.txt of the site is
fetched first and obeyed for our user agent (urllib.robotparser); a missing
robots.txt (404) allows everything, as the robots convention says, and an
unreachable one stops the crawl (we cannot know the rules). Every request goes
through the worker's host allowlist (worker/jobs/netguard.py); only HTML pages
are parsed. `delay` seconds are waited between requests (politeness), and
cancellation is checked between pages. I/O-bound: thread pool.

Per page: URL, status, title, word count, links found. Site-wide: the
internal links found, the external links (not followed), and which URLs
robots.txt excluded.
"""
from __future__ import annotations

import re
import urllib.parse
import urllib.robotparser
from collections import deque
from html.parser import HTMLParser
from typing import Any

from worker.context import JobContext
from worker.jobs.netguard import USER_AGENT, check_url, http_request
from worker.registry import BadArgument, JobError, parse_args

PAGE_MAX_BYTES = 2 << 20
_WORD_RE = re.compile(r"[^\W_]+")
_SKIP_TEXT_IN = {"script", "style", "noscript", "template"}


class PageParser(HTMLParser):
    """Title, visible words and link targets of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.links: list[str] = []
        self.words = 0
        self._in_title = False
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TEXT_IN:
            self._skip += 1
        elif tag in ("a", "area"):
            for name, value in attrs:
                if name == "href" and value:
                    self.links.append(value.strip())

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TEXT_IN and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.words += len(_WORD_RE.findall(data))


def _normalize(url: str) -> str:
    """Drop the fragment; an empty path is '/'."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.lower(), parts.path or "/", parts.query, ""))


def load_robots(ctx: JobContext, origin: str, timeout: float) -> urllib.robotparser.RobotFileParser:
    robots_url = origin + "/robots.txt"
    parser = urllib.robotparser.RobotFileParser(robots_url)
    resp = http_request(ctx.settings, robots_url, timeout_s=timeout, max_bytes=512 * 1024, ctx=ctx)
    if resp.status in (401, 403):
        parser.disallow_all = True
    elif resp.status >= 500:
        raise JobError(f"robots.txt at {robots_url} answered HTTP {resp.status}; not crawling", retryable=True)
    elif resp.status >= 400:
        parser.allow_all = True
    else:
        parser.parse(resp.text().splitlines())
    return parser


def web_scrape(args: dict, ctx: JobContext) -> dict:
    """Crawl the site of `url` (at most `max_pages` pages), obeying robots.txt."""
    a = parse_args("web.scrape", args)
    start = a["url"]
    parts = check_url(ctx.settings, start).url
    max_pages, timeout, delay, prefix_only = a["max_pages"], a["timeout"], a["delay"], a["prefix"]
    origin = f"{parts.scheme}://{parts.netloc.lower()}"
    path_prefix = parts.path.rsplit("/", 1)[0] + "/" if prefix_only else "/"
    robots = load_robots(ctx, origin, timeout)

    def in_scope(url: str) -> bool:
        p = urllib.parse.urlsplit(url)
        return f"{p.scheme}://{p.netloc.lower()}" == origin and (p.path or "/").startswith(path_prefix)

    first = _normalize(start)
    queue: deque[str] = deque([first])
    seen = {first}
    pages: list[dict[str, Any]] = []
    internal: set[str] = set()
    external: set[str] = set()
    blocked: list[str] = []
    errors: list[dict[str, str]] = []
    while queue and len(pages) < max_pages:
        ctx.check_cancelled()
        url = queue.popleft()
        if not robots.can_fetch(USER_AGENT, url):
            blocked.append(url)
            continue
        if pages and delay and ctx.wait(delay):
            ctx.check_cancelled()
        try:
            resp = http_request(ctx.settings, url, timeout_s=timeout, max_bytes=PAGE_MAX_BYTES, ctx=ctx)
        except JobError as exc:  # one bad page does not end the crawl
            if ctx.cancelled:
                raise
            errors.append({"url": url, "error": str(exc)})
            continue
        page: dict[str, Any] = {"url": url, "status": resp.status, "title": None, "words": 0, "links": 0}
        pages.append(page)
        if resp.status < 400 and resp.content_type in ("text/html", "application/xhtml+xml", ""):
            parser = PageParser()
            parser.feed(resp.text())
            parser.close()
            page["title"] = " ".join(parser.title.split()) or None
            page["words"] = parser.words
            page["links"] = len(parser.links)
            for href in parser.links:
                target = urllib.parse.urljoin(resp.url, href)
                if not target.startswith(("http://", "https://")):
                    continue  # mailto:, javascript:, ...
                target = _normalize(target)
                if in_scope(target):
                    internal.add(target)
                    if target not in seen:
                        seen.add(target)
                        queue.append(target)
                else:
                    external.add(target)
        ctx.progress(len(pages) / max_pages, f"{len(pages)} pages")
    if not pages and errors:
        raise JobError(f"no page of {origin} could be fetched: {errors[0]['error']}", retryable=True)
    if not pages and blocked and not errors:
        raise BadArgument(f"robots.txt of {origin} disallows {first} for {USER_AGENT}")
    return {
        "start": first,
        "pages": pages,
        "crawled": len(pages),
        "words": sum(p["words"] for p in pages),
        "internal_links": sorted(internal),
        "external_links": sorted(external)[:500],
        "robots_blocked": blocked,
        "not_crawled": len(queue),
        "errors": errors,
    }


JOBS: dict[str, tuple[Any, str]] = {
    "web.scrape": (web_scrape, "thread"),
}
