// Fetches an LLM engine's Prometheus page (vLLM's or SGLang's /metrics) over
// HTTP, for engine_metrics.h to read. Not on the request path: one poller
// thread scrapes the engine next to which kvgated runs.
//
// HTTP only (libcurl, restricted to the http protocol): the engine is a
// sidecar's neighbour on localhost or the pod network, where https would
// only add a certificate to manage. Redirects are not followed, proxies
// (http_proxy and the like in the environment) are not used, and the
// request asks for text/plain, which both engines serve.
//
// Thread safety: a MetricsFetcher owns one libcurl easy handle, reused from
// one Fetch to the next (and with it the connection, where the engine keeps
// it alive). It is NOT thread-safe: one thread (the poller) calls Fetch.
// Distinct fetchers may be used from distinct threads.
#ifndef KVGATE_PLUGIN_MEMORY_METRICS_FETCHER_H_
#define KVGATE_PLUGIN_MEMORY_METRICS_FETCHER_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvgate {

class MetricsFetcher {
 public:
  struct Options {
    // http://host[:port]/path, e.g. http://127.0.0.1:8000/metrics.
    std::string url;
    // The whole transfer, connecting included; at least 1 ms.
    absl::Duration timeout = absl::Milliseconds(500);
    // The largest body accepted; at least 1.
    size_t max_bytes = 4 << 20;
  };

  // InvalidArgument unless `options.url` is an http:// URL with a host (any
  // other scheme, https included, is refused), the timeout at least 1 ms and
  // max_bytes at least 1; Internal when libcurl cannot be set up.
  static absl::StatusOr<std::unique_ptr<MetricsFetcher>> Create(
      Options options);

  ~MetricsFetcher();
  MetricsFetcher(const MetricsFetcher&) = delete;
  MetricsFetcher& operator=(const MetricsFetcher&) = delete;

  // GETs the URL; the body of a 200 answer (possibly empty). Errors start
  // with "GET <url>: " then say the cause:
  //   Unavailable        connection refused, timeout, the host not resolved,
  //                      a broken answer, or a status other than 200
  //                      ("HTTP 500"; a redirect is such a status, too);
  //   ResourceExhausted  the body exceeds max_bytes (the transfer is aborted
  //                      as soon as it does).
  absl::StatusOr<std::string> Fetch();

  const Options& options() const { return options_; }

 private:
  struct Handle;  // The libcurl state, kept out of this header.

  MetricsFetcher(Options options, std::unique_ptr<Handle> handle);

  Options options_;
  std::unique_ptr<Handle> handle_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_METRICS_FETCHER_H_
