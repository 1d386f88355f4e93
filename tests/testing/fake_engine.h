// FakeEngine: an HTTP server on 127.0.0.1 that serves an LLM engine's
// /metrics page, for tests of kvgated's engine poller. The page and the way
// it answers can be changed while kvgated scrapes it, so that a test plays
// an engine whose pool fills, which preempts, which fails or goes away.
//
// One thread accepts and answers one request per connection (Connection:
// close), so every scrape is a fresh request. Destruction stops it.
#ifndef KVGATE_TESTS_TESTING_FAKE_ENGINE_H_
#define KVGATE_TESTS_TESTING_FAKE_ENGINE_H_

#include <cstdint>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"

namespace kvgate {

class FakeEngine {
 public:
  // How the next requests are answered.
  enum class Mode {
    kPage,      // 200 with the page
    kError500,  // 500 Internal Server Error
    kGarbage,   // 200 with bytes that are no Prometheus text
    kEmpty,     // 200 with an empty body
    kClosed,    // the listening socket closed: connection refused
  };

  // Starts listening on an ephemeral port; the test fails (ADD_FAILURE)
  // when it cannot.
  FakeEngine();
  ~FakeEngine();
  FakeEngine(const FakeEngine&) = delete;
  FakeEngine& operator=(const FakeEngine&) = delete;

  // http://127.0.0.1:PORT/metrics
  std::string url() const;

  void SetPage(std::string page);
  // kClosed closes the socket (within 50 ms); any other mode after it
  // listens again on the same port.
  void SetMode(Mode mode);
  // Requests answered so far (any mode but kClosed).
  int requests() const;

 private:
  void Listen();
  void Serve();
  void Answer(int fd);

  int port_ = 0;
  mutable absl::Mutex mu_;
  int listen_fd_ ABSL_GUARDED_BY(mu_) = -1;
  std::string page_ ABSL_GUARDED_BY(mu_);
  Mode mode_ ABSL_GUARDED_BY(mu_) = Mode::kPage;
  int requests_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// A vLLM /metrics page of one engine serving `model`, shaped as current
// vLLM writes it (HELP/TYPE lines, engine and model_name labels, the
// cache_config_info label set, a _created sibling of the preemption
// counter): a pool of `num_gpu_blocks` blocks of `block_size` tokens,
// `usage` (0..1) of it in use, `preemptions` so far.
std::string VllmPage(const std::string& model, uint64_t num_gpu_blocks,
                     uint32_t block_size, double usage, uint64_t preemptions);

// An SGLang /metrics page of a tensor-parallel 2 server (every series
// repeated for tp_rank 0 and 1, as SGLang writes them): a pool of
// `pool_tokens`, `usage` in use, `retractions` so far.
std::string SglangPage(const std::string& model, uint64_t pool_tokens,
                       double usage, uint64_t retractions);

}  // namespace kvgate

#endif  // KVGATE_TESTS_TESTING_FAKE_ENGINE_H_
