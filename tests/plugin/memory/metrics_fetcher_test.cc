#include "plugin/memory/metrics_fetcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plugin/memory/engine_metrics.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;
using ::testing::Optional;
using ::testing::StartsWith;

// A StatusOr that is OK and holds `value`.
MATCHER_P(IsOkAndHolds, value, "") {
  if (!arg.ok()) {
    *result_listener << "status " << arg.status();
    return false;
  }
  return *arg == value;
}

// No wait in this file lasts longer than this.
constexpr int kBoundMs = 5000;

// One scripted answer: `bytes` written as they are, then the connection
// closed; with `hold`, nothing is written and the connection is held open
// until the server stops.
struct Reply {
  std::string bytes;
  bool hold = false;
};

Reply Http200(const std::string& body) {
  return {
      absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                   "Content-Length: ",
                   body.size(), "\r\nConnection: close\r\n\r\n", body)};
}

// `chunks` sent with chunked transfer encoding.
Reply Http200Chunked(const std::vector<std::string>& chunks) {
  std::string bytes =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
      "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
  for (const std::string& chunk : chunks) {
    absl::StrAppend(&bytes, absl::Hex(chunk.size()), "\r\n", chunk, "\r\n");
  }
  absl::StrAppend(&bytes, "0\r\n\r\n");
  return {bytes};
}

// A loopback HTTP server on a thread: it answers the i-th connection with
// replies[i], after reading its request head, then stops accepting. The
// destructor stops the thread (a held connection included) and joins it.
class ScriptedServer {
 public:
  explicit ScriptedServer(std::vector<Reply> replies)
      : replies_(std::move(replies)) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len), 0);
    EXPECT_EQ(listen(listen_fd_, 8), 0);
    EXPECT_EQ(getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len),
              0);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(pipe(stop_), 0);
    thread_ = std::thread([this] { Serve(); });
  }

  ~ScriptedServer() {
    EXPECT_EQ(write(stop_[1], "x", 1), 1);
    thread_.join();
    close(listen_fd_);
    close(stop_[0]);
    close(stop_[1]);
  }

  std::string Url(const std::string& path = "/metrics") const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

  // The request heads received so far, in order.
  std::vector<std::string> Requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  // Waits (bounded) until `fd` is ready for `events`; false on stop, timeout
  // or error.
  bool WaitFor(int fd, short events) {  // NOLINT(runtime/int): poll's type
    pollfd fds[2] = {{fd, events, 0}, {stop_[0], POLLIN, 0}};
    if (poll(fds, 2, kBoundMs) <= 0) return false;
    return fds[1].revents == 0 && (fds[0].revents & events) != 0;
  }

  void Serve() {
    for (const Reply& reply : replies_) {
      if (!WaitFor(listen_fd_, POLLIN)) return;
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      std::string head = ReadHead(fd);
      {
        absl::MutexLock lock(&mu_);
        requests_.push_back(std::move(head));
      }
      if (reply.hold) {
        pollfd stop = {stop_[0], POLLIN, 0};
        poll(&stop, 1, kBoundMs);
      } else {
        WriteAll(fd, reply.bytes);
      }
      close(fd);
    }
  }

  std::string ReadHead(int fd) {
    std::string head;
    char buffer[4096];
    while (head.find("\r\n\r\n") == std::string::npos && WaitFor(fd, POLLIN)) {
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      head.append(buffer, static_cast<size_t>(n));
    }
    return head;
  }

  // Stops early when the client goes away (it may abort a long body).
  void WriteAll(int fd, const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size() && WaitFor(fd, POLLOUT)) {
      const ssize_t n =
          send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
  }

  const std::vector<Reply> replies_;
  int listen_fd_ = -1;
  int port_ = 0;
  int stop_[2] = {-1, -1};
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<std::string> requests_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<MetricsFetcher> MakeFetcher(const std::string& url,
                                            size_t max_bytes = 4 << 20) {
  MetricsFetcher::Options options;
  options.url = url;
  options.timeout = absl::Milliseconds(200);
  options.max_bytes = max_bytes;
  absl::StatusOr<std::unique_ptr<MetricsFetcher>> fetcher =
      MetricsFetcher::Create(options);
  EXPECT_TRUE(fetcher.ok()) << fetcher.status();
  return fetcher.ok() ? std::move(*fetcher) : nullptr;
}

TEST(MetricsFetcherTest, CreateRefusesBadOptions) {
  for (const char* url :
       {"", "https://127.0.0.1:8000/metrics", "ftp://127.0.0.1/metrics",
        "http://", "http:///metrics", "http:/127.0.0.1/metrics", "http://?x",
        "127.0.0.1:8000/metrics", "http://exa mple/metrics"}) {
    MetricsFetcher::Options options;
    options.url = url;
    absl::StatusOr<std::unique_ptr<MetricsFetcher>> fetcher =
        MetricsFetcher::Create(options);
    EXPECT_EQ(fetcher.status().code(), absl::StatusCode::kInvalidArgument)
        << url << ": " << fetcher.status();
    EXPECT_THAT(std::string(fetcher.status().message()),
                StartsWith(absl::StrCat("metrics URL \"", url, "\": ")));
  }
  EXPECT_EQ(MetricsFetcher::Create({"https://127.0.0.1:8000/metrics"}).status(),
            absl::InvalidArgumentError(
                "metrics URL \"https://127.0.0.1:8000/metrics\": not http:// "
                "(the engine's page is read over plain HTTP)"));

  MetricsFetcher::Options options;
  options.url = "http://127.0.0.1:8000/metrics";
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(MetricsFetcher::Create(options).status(),
            absl::InvalidArgumentError("metrics fetch timeout 0: must be at "
                                       "least 1ms and finite"));
  options.timeout = absl::InfiniteDuration();
  EXPECT_EQ(MetricsFetcher::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.timeout = absl::Milliseconds(1);
  options.max_bytes = 0;
  EXPECT_EQ(MetricsFetcher::Create(options).status(),
            absl::InvalidArgumentError("metrics fetch max_bytes must be >= 1"));
  options.max_bytes = 1;
  EXPECT_TRUE(MetricsFetcher::Create(options).ok());
  options.url = "http://localhost/metrics";
  EXPECT_TRUE(MetricsFetcher::Create(options).ok());
}

TEST(MetricsFetcherTest, ReturnsTheBodyOfA200WithContentLength) {
  ScriptedServer server({Http200("a 1\nb 2\n")});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url());
  ASSERT_NE(fetcher, nullptr);
  EXPECT_THAT(fetcher->Fetch(), IsOkAndHolds(std::string("a 1\nb 2\n")));
  std::vector<std::string> requests = server.Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_THAT(requests[0], StartsWith("GET /metrics HTTP/1.1\r\n"));
  EXPECT_THAT(requests[0], HasSubstr("\r\nAccept: text/plain\r\n"));
}

TEST(MetricsFetcherTest, ReturnsTheBodyOfAChunked200) {
  ScriptedServer server({Http200Chunked({"a 1\n", "b ", "2\n"})});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url());
  ASSERT_NE(fetcher, nullptr);
  EXPECT_THAT(fetcher->Fetch(), IsOkAndHolds(std::string("a 1\nb 2\n")));
}

TEST(MetricsFetcherTest, ReturnsAnEmptyBody) {
  ScriptedServer server({Http200("")});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url());
  ASSERT_NE(fetcher, nullptr);
  EXPECT_THAT(fetcher->Fetch(), IsOkAndHolds(std::string()));
}

TEST(MetricsFetcherTest, ReusesOneFetcherForSeveralFetches) {
  ScriptedServer server({Http200("first\n"), Http200("second\n")});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url());
  ASSERT_NE(fetcher, nullptr);
  EXPECT_THAT(fetcher->Fetch(), IsOkAndHolds(std::string("first\n")));
  EXPECT_THAT(fetcher->Fetch(), IsOkAndHolds(std::string("second\n")));
  EXPECT_EQ(server.Requests().size(), 2u);
}

TEST(MetricsFetcherTest, A500IsUnavailable) {
  ScriptedServer server(
      {{"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n"
        "Connection: close\r\n\r\noops"}});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url());
  ASSERT_NE(fetcher, nullptr);
  EXPECT_EQ(
      fetcher->Fetch().status(),
      absl::UnavailableError(absl::StrCat("GET ", server.Url(), ": HTTP 500")));
}

TEST(MetricsFetcherTest, DoesNotFollowARedirect) {
  ScriptedServer server({{"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n"
                          "Content-Length: 0\r\nConnection: close\r\n\r\n"},
                         Http200("redirected\n")});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url());
  ASSERT_NE(fetcher, nullptr);
  EXPECT_EQ(
      fetcher->Fetch().status(),
      absl::UnavailableError(absl::StrCat("GET ", server.Url(), ": HTTP 302")));
  EXPECT_EQ(server.Requests().size(), 1u);
}

TEST(MetricsFetcherTest, AcceptsABodyOfExactlyMaxBytes) {
  ScriptedServer server(
      {Http200(std::string(1000, 'x')),
       Http200Chunked({std::string(600, 'y'), std::string(400, 'z')})});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url(), 1000);
  ASSERT_NE(fetcher, nullptr);
  EXPECT_THAT(fetcher->Fetch(), IsOkAndHolds(std::string(1000, 'x')));
  EXPECT_THAT(fetcher->Fetch(),
              IsOkAndHolds(std::string(600, 'y') + std::string(400, 'z')));
}

TEST(MetricsFetcherTest, ABodyOverMaxBytesIsResourceExhausted) {
  // Announced by Content-Length, then without a length (chunked): the
  // transfer is aborted once over, long before the 1 MiB are sent.
  const std::string big(1 << 20, 'x');
  ScriptedServer server(
      {Http200(big), Http200Chunked({std::string(600, 'y'), big})});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url(), 1000);
  ASSERT_NE(fetcher, nullptr);
  const absl::Status expected = absl::ResourceExhaustedError(
      absl::StrCat("GET ", server.Url(), ": body over max_bytes (1000 bytes)"));
  EXPECT_EQ(fetcher->Fetch().status(), expected);
  EXPECT_EQ(fetcher->Fetch().status(), expected);
}

TEST(MetricsFetcherTest, AServerThatNeverAnswersTimesOut) {
  ScriptedServer server({{"", /*hold=*/true}});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url());
  ASSERT_NE(fetcher, nullptr);
  // curl's own timeout ends the wait (its message says so); no timing is
  // asserted here.
  absl::Status status = fetcher->Fetch().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()),
              StartsWith(absl::StrCat("GET ", server.Url(), ": ")));
  EXPECT_THAT(std::string(status.message()), HasSubstr("Timeout was reached"));
}

TEST(MetricsFetcherTest, ARefusedConnectionIsUnavailable) {
  // A port bound then closed, never listened on: connect() is refused.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  const std::string url =
      absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port), "/metrics");
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(url);
  ASSERT_NE(fetcher, nullptr);
  absl::Status status = fetcher->Fetch().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(
      std::string(status.message()),
      StartsWith(absl::StrCat("GET ", url, ": Couldn't connect to server")));
}

TEST(MetricsFetcherTest, AnUnknownHostIsUnavailable) {
  // .invalid never resolves; without a resolver the 200 ms timeout ends it.
  std::unique_ptr<MetricsFetcher> fetcher =
      MakeFetcher("http://kvgate-engine.invalid/metrics");
  ASSERT_NE(fetcher, nullptr);
  absl::Status status = fetcher->Fetch().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()),
              StartsWith("GET http://kvgate-engine.invalid/metrics: "));
}

// A vLLM (v1) page with one engine, as its PrometheusStatLogger writes it:
// 28000 blocks of 16 tokens.
constexpr char kVllmPage[] =
    R"(# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 31.5
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",cpu_offload_gb="0",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",is_attention_free="False",num_cpu_blocks="None",num_gpu_blocks="28000",num_gpu_blocks_override="None",prefix_caching_hash_algo="builtin",sliding_window="None",swap_space="4",swap_space_bytes="4294967296"} 1.0
)";

TEST(MetricsFetcherTest, FetchesAndReadsAVllmPage) {
  // Served chunked in pieces that cut lines, as a streaming server may.
  const std::string page = kVllmPage;
  std::vector<std::string> chunks;
  for (size_t at = 0; at < page.size(); at += 700) {
    chunks.push_back(page.substr(at, 700));
  }
  ScriptedServer server({Http200Chunked(chunks)});
  std::unique_ptr<MetricsFetcher> fetcher = MakeFetcher(server.Url());
  ASSERT_NE(fetcher, nullptr);
  absl::StatusOr<std::string> body = fetcher->Fetch();
  ASSERT_THAT(body, IsOkAndHolds(page));
  EngineMetricsOptions options;
  options.model_name = "meta-llama/Llama-3.1-8B-Instruct";
  absl::StatusOr<EngineReading> reading = ReadEnginePage(*body, options);
  ASSERT_TRUE(reading.ok()) << reading.status();
  EXPECT_EQ(reading->pool_tokens, 448000u);
  EXPECT_THAT(reading->usage, Optional(0.25));
  EXPECT_THAT(reading->preemptions, Optional(7u));
  EXPECT_THAT(reading->running_requests, Optional(3u));
  EXPECT_THAT(reading->waiting_requests, Optional(4u));
  EXPECT_EQ(reading->engines, 1);
}

}  // namespace
}  // namespace kvgate
