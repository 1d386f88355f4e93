#include "tests/testing/fake_engine.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

// Waits up to 50 ms for `fd` to be readable.
bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 50) > 0;
}

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n =
        send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

std::string Response(int code, const char* reason, const std::string& body) {
  return absl::StrCat("HTTP/1.1 ", code, " ", reason,
                      "\r\nContent-Type: text/plain; version=0.0.4\r\n"
                      "Connection: close\r\nContent-Length: ",
                      body.size(), "\r\n\r\n", body);
}

}  // namespace

FakeEngine::FakeEngine() {
  Listen();
  thread_ = std::thread([this] { Serve(); });
}

FakeEngine::~FakeEngine() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
  absl::MutexLock lock(&mu_);
  if (listen_fd_ >= 0) close(listen_fd_);
}

void FakeEngine::Listen() {
  // Close-on-exec: a kvgated the test forks must not inherit the socket
  // (it would keep the port bound after kClosed).
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      listen(fd, 16) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << "fake engine cannot listen on port " << port_ << ": "
                  << strerror(errno);
    close(fd);
    return;
  }
  port_ = ntohs(addr.sin_port);
  absl::MutexLock lock(&mu_);
  listen_fd_ = fd;
}

std::string FakeEngine::url() const {
  return absl::StrCat("http://127.0.0.1:", port_, "/metrics");
}

void FakeEngine::SetPage(std::string page) {
  absl::MutexLock lock(&mu_);
  page_ = std::move(page);
}

void FakeEngine::SetMode(Mode mode) {
  // The serving thread closes or reopens the socket: closing it here while
  // that thread polls it would keep the port bound until the poll returns.
  absl::MutexLock lock(&mu_);
  mode_ = mode;
}

int FakeEngine::requests() const {
  absl::MutexLock lock(&mu_);
  return requests_;
}

void FakeEngine::Serve() {
  for (;;) {
    int fd = -1;
    bool reopen = false;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      if (mode_ == Mode::kClosed && listen_fd_ >= 0) {
        close(listen_fd_);
        listen_fd_ = -1;
      }
      reopen = mode_ != Mode::kClosed && listen_fd_ < 0;
      fd = listen_fd_;
    }
    if (reopen) {
      Listen();
      continue;
    }
    if (fd < 0) {
      usleep(10000);
      continue;
    }
    if (!Readable(fd)) continue;
    const int conn = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    Answer(conn);
    close(conn);
  }
}

void FakeEngine::Answer(int fd) {
  // Read the request head (a GET has no body).
  std::string head;
  char buffer[4096];
  while (head.find("\r\n\r\n") == std::string::npos && Readable(fd)) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    head.append(buffer, static_cast<size_t>(n));
  }
  std::string response;
  {
    absl::MutexLock lock(&mu_);
    ++requests_;
    switch (mode_) {
      case Mode::kPage:
        response = Response(200, "OK", page_);
        break;
      case Mode::kError500:
        response = Response(500, "Internal Server Error", "engine error\n");
        break;
      case Mode::kGarbage:
        response = Response(200, "OK", "\x01\x02{not: prometheus\n}\n\xff");
        break;
      case Mode::kEmpty:
      case Mode::kClosed:
        response = Response(200, "OK", "");
        break;
    }
  }
  SendAll(fd, response);
}

std::string VllmPage(const std::string& model, uint64_t num_gpu_blocks,
                     uint32_t block_size, double usage, uint64_t preemptions) {
  const std::string labels =
      absl::StrFormat("engine=\"0\",model_name=\"%s\"", model);
  return absl::StrCat(
      "# HELP vllm:num_requests_running Number of requests in model execution "
      "batches.\n# TYPE vllm:num_requests_running gauge\n"
      "vllm:num_requests_running{",
      labels,
      "} 1.0\n"
      "# HELP vllm:num_requests_waiting Number of requests waiting to be "
      "processed.\n# TYPE vllm:num_requests_waiting gauge\n"
      "vllm:num_requests_waiting{",
      labels,
      "} 0.0\n"
      "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent "
      "usage.\n# TYPE vllm:kv_cache_usage_perc gauge\n"
      "vllm:kv_cache_usage_perc{",
      labels, "} ", absl::StrFormat("%.17g", usage),
      "\n# HELP vllm:num_preemptions_total Cumulative number of preemption "
      "from the engine.\n# TYPE vllm:num_preemptions_total counter\n"
      "vllm:num_preemptions_total{",
      labels, "} ", preemptions,
      ".0\n# HELP vllm:num_preemptions_created Cumulative number of "
      "preemption from the engine.\n"
      "# TYPE vllm:num_preemptions_created gauge\n"
      "vllm:num_preemptions_created{",
      labels,
      "} 1.7331e+09\n"
      "# HELP vllm:cache_config_info Information of the LLMEngine "
      "CacheConfig\n# TYPE vllm:cache_config_info gauge\n"
      "vllm:cache_config_info{block_size=\"",
      block_size,
      "\",cache_dtype=\"auto\",calculate_kv_scales=\"False\","
      "cpu_offload_gb=\"0\",enable_prefix_caching=\"True\",engine=\"0\","
      "gpu_memory_utilization=\"0.9\",is_attention_free=\"False\","
      "kv_cache_size_tokens=\"None\",num_cpu_blocks=\"None\","
      "num_gpu_blocks=\"",
      num_gpu_blocks,
      "\",num_gpu_blocks_override=\"None\","
      "prefix_caching_hash_algo=\"builtin\",sliding_window=\"None\","
      "swap_space=\"4\",swap_space_bytes=\"4294967296\"} 1.0\n");
}

std::string SglangPage(const std::string& model, uint64_t pool_tokens,
                       double usage, uint64_t retractions) {
  std::string page =
      "# HELP sglang:max_total_num_tokens Maximum total number of tokens in "
      "the KV cache pool.\n# TYPE sglang:max_total_num_tokens gauge\n";
  const char* kFamilies[][2] = {
      {"sglang:token_usage", "gauge"},
      {"sglang:num_running_reqs", "gauge"},
      {"sglang:num_queue_reqs", "gauge"},
      {"sglang:num_retracted_requests_total", "counter"},
  };
  for (int rank = 0; rank < 2; ++rank) {
    absl::StrAppendFormat(&page,
                          "sglang:max_total_num_tokens{engine_type=\"unified\","
                          "model_name=\"%s\",pp_rank=\"0\",tp_rank=\"%d\"} "
                          "%d.0\n",
                          model, rank, pool_tokens);
  }
  const std::string values[] = {absl::StrFormat("%.17g", usage), "1.0", "0.0",
                                absl::StrCat(retractions, ".0")};
  for (int f = 0; f < 4; ++f) {
    absl::StrAppend(&page, "# HELP ", kFamilies[f][0], " ", kFamilies[f][0],
                    "\n# TYPE ", kFamilies[f][0], " ", kFamilies[f][1], "\n");
    for (int rank = 0; rank < 2; ++rank) {
      absl::StrAppendFormat(&page,
                            "%s{engine_type=\"unified\",model_name=\"%s\","
                            "pp_rank=\"0\",tp_rank=\"%d\"} %s\n",
                            kFamilies[f][0], model, rank, values[f]);
    }
  }
  return page;
}

}  // namespace kvgate
