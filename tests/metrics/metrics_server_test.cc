#include "metrics/metrics_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/metrics.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

int PortOf(const std::string& address) {
  int port = -1;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port));
  return port;
}

// GET `path` from 127.0.0.1:`port` over a plain socket; the raw response, or
// the error that stopped it.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError("connect");
  }
  const std::string request =
      absl::StrCat("GET ", path,
                   " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  if (send(fd, request.data(), request.size(), 0) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("send");
  }
  // Read the head, then exactly Content-Length bytes of body (the server may
  // keep the connection open).
  std::string response;
  char buf[4096];
  size_t want = std::string::npos;
  while (want == std::string::npos || response.size() < want) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
    const size_t head_end = response.find("\r\n\r\n");
    const size_t length_at = response.find("Content-Length: ");
    size_t length = 0;
    if (want == std::string::npos && head_end != std::string::npos &&
        length_at < head_end &&
        absl::SimpleAtoi(
            response.substr(length_at + 16,
                            response.find("\r\n", length_at) - length_at - 16),
            &length)) {
      want = head_end + 4 + length;
    }
  }
  close(fd);
  if (want == std::string::npos || response.size() < want) {
    return absl::DataLossError(absl::StrCat("short response: ", response));
  }
  return response;
}

TEST(MetricsServerTest, ServesTheRegistryOnAnEphemeralPort) {
  KvgateMetrics::Options options;
  options.version = "9.9.9";
  KvgateMetrics metrics(options);
  metrics.ObserveAdmitDuration(absl::Milliseconds(2));
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  EXPECT_THAT(address, StartsWith("127.0.0.1:"));
  const int port = PortOf(address);
  EXPECT_GT(port, 0);

  absl::StatusOr<std::string> response = HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(*response, HasSubstr("Content-Type: text/plain"));
  EXPECT_THAT(*response, HasSubstr("kvgate_build_info{revision=\"unknown\","
                                   "version=\"9.9.9\"} 1\n"));
  // The lock-free histograms are served too, not only the registry's own
  // families.
  EXPECT_THAT(*response, HasSubstr("kvgate_admit_duration_seconds_count 1\n"));
}

TEST(MetricsServerTest, StopsServingWhenDestroyed) {
  KvgateMetrics metrics(KvgateMetrics::Options{});
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = PortOf((*server)->address());
  server->reset();
  EXPECT_EQ(HttpGet(port, "/metrics").status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(MetricsServerTest, PortInUseIsUnavailable) {
  KvgateMetrics metrics(KvgateMetrics::Options{});
  auto first = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = MetricsServer::Start((*first)->address(), metrics.registry());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr((*first)->address()));
}

TEST(MetricsServerTest, RejectsMalformedAddresses) {
  KvgateMetrics metrics(KvgateMetrics::Options{});
  for (const char* address :
       {"", "9464", ":9464", "localhost", "127.0.0.1:", "127.0.0.1:x",
        "127.0.0.1:70000", "127.0.0.1:-1", "::1:9464"}) {
    auto server = MetricsServer::Start(address, metrics.registry());
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument)
        << address;
  }
}

TEST(MetricsServerTest, RejectsANullRegistry) {
  auto server = MetricsServer::Start("127.0.0.1:0", nullptr);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvgate
