#include "tests/testing/ext_proc_client.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "plugin/base/handoff.h"

namespace kvgate {

using envoy::service::ext_proc::v3::ExternalProcessor;
using envoy::service::ext_proc::v3::HeaderMutation;
using envoy::service::ext_proc::v3::ProcessingRequest;
using envoy::service::ext_proc::v3::ProcessingResponse;

namespace {

// Longest wait, after TryCancel, for the stream to end: gRPC then ends it at
// once, so running out of this means a hung client library or server.
constexpr absl::Duration kCancelGrace = absl::Seconds(10);

}  // namespace

EnvoyStream::EnvoyStream(ExternalProcessor::Stub* stub,
                         absl::Duration deadline) {
  context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  stub->async()->Process(&context_, this);
  StartRead(&incoming_);
  HandOff(this);  // callbacks run on gRPC threads
  StartCall();
}

EnvoyStream::~EnvoyStream() {
  context_.TryCancel();
  absl::MutexLock lock(&mu_);
  if (!mu_.AwaitWithTimeout(absl::Condition(&done_), kCancelGrace)) {
    ADD_FAILURE() << "(test) ext_proc stream not done " << kCancelGrace
                  << " after TryCancel";
  }
}

void EnvoyStream::Send(const ProcessingRequest& request) {
  absl::MutexLock lock(&mu_);
  outgoing_.push_back(request);
  if (!writing_) {
    writing_ = true;
    HandOff(this);
    StartWrite(&outgoing_.front());
  }
}

void EnvoyStream::Close() {
  absl::MutexLock lock(&mu_);
  close_pending_ = true;
  if (!writing_) StartWritesDone();
}

void EnvoyStream::Abort() { context_.TryCancel(); }

std::optional<ProcessingResponse> EnvoyStream::Next(absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !received_.empty() || reads_done_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), wait);
  if (received_.empty()) return std::nullopt;
  ProcessingResponse r = std::move(received_.front());
  received_.pop_front();
  return r;
}

size_t EnvoyStream::Pending() {
  absl::MutexLock lock(&mu_);
  return received_.size();
}

grpc::Status EnvoyStream::Status(absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  if (!mu_.AwaitWithTimeout(absl::Condition(&done_), wait)) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "(test) open");
  }
  return status_;
}

void EnvoyStream::OnWriteDone(bool ok) {
  HandOffReceived(this);
  absl::MutexLock lock(&mu_);
  outgoing_.pop_front();
  if (!ok) outgoing_.clear();
  if (!outgoing_.empty()) {
    StartWrite(&outgoing_.front());
    return;
  }
  writing_ = false;
  if (close_pending_ && ok) StartWritesDone();
}

void EnvoyStream::OnReadDone(bool ok) {
  HandOffReceived(this);
  absl::MutexLock lock(&mu_);
  if (!ok) {
    reads_done_ = true;
    return;
  }
  received_.push_back(incoming_);
  StartRead(&incoming_);
}

void EnvoyStream::OnDone(const grpc::Status& status) {
  HandOffReceived(this);
  absl::MutexLock lock(&mu_);
  status_ = status;
  done_ = true;
}

ProcessingRequest RequestHeaders(
    const std::string& method, const std::string& path,
    const std::vector<std::pair<std::string, std::string>>& extra,
    bool end_of_stream) {
  ProcessingRequest r;
  auto* headers = r.mutable_request_headers();
  auto add = [headers](const std::string& k, const std::string& v) {
    auto* h = headers->mutable_headers()->add_headers();
    h->set_key(k);
    h->set_raw_value(v);
  };
  add(":method", method);
  add(":path", path);
  add(":authority", "engine");
  add("content-type", "application/json");
  for (const auto& [k, v] : extra) add(k, v);
  headers->set_end_of_stream(end_of_stream);
  return r;
}

ProcessingRequest RequestBody(const std::string& bytes, bool end_of_stream) {
  ProcessingRequest r;
  r.mutable_request_body()->set_body(bytes);
  r.mutable_request_body()->set_end_of_stream(end_of_stream);
  return r;
}

ProcessingRequest ResponseHeaders(bool end_of_stream) {
  ProcessingRequest r;
  auto* h = r.mutable_response_headers()->mutable_headers()->add_headers();
  h->set_key(":status");
  h->set_raw_value("200");
  r.mutable_response_headers()->set_end_of_stream(end_of_stream);
  return r;
}

ProcessingRequest ResponseBody(const std::string& bytes, bool end_of_stream) {
  ProcessingRequest r;
  r.mutable_response_body()->set_body(bytes);
  r.mutable_response_body()->set_end_of_stream(end_of_stream);
  return r;
}

std::string ChatCompletionBody(const std::string& model, uint64_t max_tokens) {
  return nlohmann::json{
      {"model", model},
      {"messages",
       {{{"role", "user"}, {"content", "Tell me about KV caches."}}}},
      {"max_tokens", max_tokens},
      {"stream", true}}
      .dump();
}

std::vector<std::pair<std::string, std::string>> ChatHeaders(
    uint64_t prompt_tokens, const std::string& tenant) {
  return {{"x-kvgate-prompt-tokens", absl::StrCat(prompt_tokens)},
          {"x-kvgate-tenant", tenant}};
}

std::optional<std::string> Header(const HeaderMutation& mutation,
                                  const std::string& key) {
  for (const auto& option : mutation.set_headers()) {
    if (option.header().key() != key) continue;
    EXPECT_EQ(option.header().value(), "") << key << " must use raw_value";
    return option.header().raw_value();
  }
  return std::nullopt;
}

}  // namespace kvgate
