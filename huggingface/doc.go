// Package huggingface owns fetching Hugging Face Hub repositories into the registry: the Hub client
// (revision resolution, paginated file listing, manual redirects that keep tokens off CDN hosts,
// error codes mapped to sentinel errors), the download engine (files in parallel, large files as
// parallel byte ranges into preallocated partial files with a durable journal, bounded memory, stall
// detection, backoff honouring Retry-After and RateLimit, re-resolution of expired signed URLs) and
// the Fetcher, which verifies every file (sha256 for LFS files, git blob sha1 for regular files,
// sizes against the announced size) before publishing a version through one registry import.
//
// Guarantees: nothing is published unless every selected file verified; a fetch killed at any
// moment continues from the bytes that were durable; filenames from the Hub never escape the
// staging directory; the token is never sent to a host other than the Hub endpoint's.
package huggingface
