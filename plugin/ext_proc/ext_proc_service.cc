#include "plugin/ext_proc/ext_proc_service.h"

#include <deque>
#include <optional>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "plugin/base/handoff.h"
#include "plugin/ext_proc/ext_proc_gate.h"
#include "plugin/ext_proc/ext_proc_responses.h"

namespace kvgate {
namespace {

using envoy::service::ext_proc::v3::HttpBody;
using envoy::service::ext_proc::v3::HttpHeaders;
using envoy::service::ext_proc::v3::ProcessingRequest;
using envoy::service::ext_proc::v3::ProcessingResponse;

std::string RandomPrefix() {
  absl::BitGen gen;
  return absl::StrFormat("extproc-%016x", absl::Uniform<uint64_t>(gen));
}

}  // namespace

// One ext_proc stream, i.e. one HTTP request. Reactions (reads, writes,
// cancel, done) and the controller's answer may run on different threads;
// `mu_` guards the state. Calls into the controller happen outside `mu_`,
// since the controller may answer on the calling thread.
//
// Lifetime: deleted in OnDone, unless an Admit is still unanswered; then by
// that answer (the controller answers every ticket exactly once).
class ExtProcService::Stream final
    : public grpc::ServerBidiReactor<ProcessingRequest, ProcessingResponse> {
 public:
  Stream(ExtProcService* service, std::string request_id)
      : service_(service), request_id_(std::move(request_id)) {
    service_->calls_.Begin();
    HandOff(this);
    StartRead(&request_);
  }

  ~Stream() override { service_->calls_.End(); }

  void OnReadDone(bool ok) override {
    HandOffReceived(this);
    if (!ok) {  // Envoy closed its side, or the stream broke.
      {
        absl::MutexLock lock(&mu_);
        reads_done_ = true;
        MaybeFinishLocked();
      }
      Abandon();
      return;
    }
    Action action;
    bool more = false;
    {
      absl::MutexLock lock(&mu_);
      action = HandleLocked(request_);
      more = !finished_;
    }
    Run(std::move(action));
    if (more) {
      HandOff(this);
      StartRead(&request_);
    }
  }

  void OnWriteDone(bool ok) override {
    HandOffReceived(this);
    absl::MutexLock lock(&mu_);
    writes_.pop_front();
    if (!ok) writes_.clear();  // the stream is broken; a cancel follows
    if (!writes_.empty()) {
      HandOff(this);
      StartWrite(&writes_.front());
      return;
    }
    writing_ = false;
    MaybeFinishLocked();
  }

  // Client abort, upstream reset, Envoy gone or deadline passed.
  void OnCancel() override {
    HandOffReceived(this);
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      MaybeFinishLocked();
    }
    Abandon();
  }

  void OnDone() override {
    HandOffReceived(this);
    Abandon();
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      last = !admit_pending_;
    }
    if (last) delete this;
  }

 private:
  enum class State {
    kHeaders,      // waiting for request_headers
    kBody,         // reading the request body
    kAdmitting,    // body read; waiting for the controller
    kAdmitted,     // forwarded upstream with a lease
    kPassThrough,  // not gated
    kAnswered      // an immediate response was sent
  };

  // Work for the controller, done after `mu_` is released.
  struct Action {
    ModelPool* pool = nullptr;
    std::optional<AdmitTicket> admit;
    std::string release_lease;
  };

  Action HandleLocked(const ProcessingRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Action action;
    switch (request.request_case()) {
      case ProcessingRequest::kRequestHeaders:
        OnRequestHeadersLocked(request.request_headers());
        break;
      case ProcessingRequest::kRequestBody:
        action = OnRequestBodyLocked(request.request_body());
        break;
      case ProcessingRequest::kRequestTrailers:
        if (state_ == State::kBody) {  // the body ended with trailers
          held_.push_back(ExtProcPhase::kRequestTrailers);
          action = DecideLocked();
        } else if (state_ != State::kAnswered) {
          WriteLocked(ContinueResponse(ExtProcPhase::kRequestTrailers));
        }
        break;
      case ProcessingRequest::kResponseHeaders: {
        ProcessingResponse response =
            ContinueResponse(ExtProcPhase::kResponseHeaders);
        if (state_ == State::kAdmitted) {
          AddAdmittedHeaders(reserved_bytes_,
                             *response.mutable_response_headers()
                                  ->mutable_response()
                                  ->mutable_header_mutation());
        }
        WriteLocked(std::move(response));
        if (request.response_headers().end_of_stream()) {
          action = ReleaseLocked();
        }
        break;
      }
      case ProcessingRequest::kResponseBody:
        WriteLocked(ContinueResponse(ExtProcPhase::kResponseBody));
        if (request.response_body().end_of_stream()) action = ReleaseLocked();
        break;
      case ProcessingRequest::kResponseTrailers:
        WriteLocked(ContinueResponse(ExtProcPhase::kResponseTrailers));
        action = ReleaseLocked();
        break;
      case ProcessingRequest::REQUEST_NOT_SET:
        break;
    }
    return action;
  }

  void OnRequestHeadersLocked(const HttpHeaders& headers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (state_ != State::kHeaders) {
      WriteLocked(ContinueResponse(ExtProcPhase::kRequestHeaders));
      return;
    }
    const ExtProcGate& gate = service_->gate_;
    HeadersVerdict verdict = gate.OnRequestHeaders(
        ReadRequestHeaders(headers, gate.options()), service_->serving_state());
    if (const HttpError* error = std::get_if<HttpError>(&verdict)) {
      return RejectLocked(*error);
    }
    if (GatedRequest* gated = std::get_if<GatedRequest>(&verdict)) {
      gated_ = std::move(*gated);
      state_ = State::kBody;
    } else {
      state_ = State::kPassThrough;
    }
    WriteLocked(ContinueResponse(ExtProcPhase::kRequestHeaders));
  }

  Action OnRequestBodyLocked(const HttpBody& body)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (state_ != State::kBody) {
      if (state_ != State::kAnswered) {
        WriteLocked(ContinueResponse(ExtProcPhase::kRequestBody));
      }
      return {};
    }
    if (std::optional<HttpError> error =
            service_->gate_.OnBodyChunk(body_.size(), body.body().size())) {
      RejectLocked(*error);
      return {};
    }
    body_.append(body.body());
    held_.push_back(ExtProcPhase::kRequestBody);
    if (!body.end_of_stream()) {
      // STREAMED mode: the chunk's answer waits for the decision, so Envoy
      // must wait longer than message_timeout for it.
      ExtendLocked();
      return {};
    }
    return DecideLocked();
  }

  // The body is complete: the gate decides; an Admit goes to Run().
  Action DecideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    state_ = State::kAdmitting;
    BodyVerdict verdict = service_->gate_.OnRequestBody(
        gated_, body_, request_id_, service_->clock_->Now());
    std::string().swap(body_);
    if (const HttpError* error = std::get_if<HttpError>(&verdict)) {
      RejectLocked(*error);
      return {};
    }
    ExtProcAdmit& admit = std::get<ExtProcAdmit>(verdict);
    pool_ = admit.pool;
    replacement_body_ = std::move(admit.body);
    admit_pending_ = true;
    Action action;
    action.pool = admit.pool;
    action.admit = std::move(admit.ticket);
    return action;
  }

  // Runs what HandleLocked decided, outside `mu_`.
  void Run(Action action) {
    if (!action.release_lease.empty()) {
      action.pool->controller()
          .Release(action.release_lease)
          .status()
          .IgnoreError();
    }
    if (action.admit.has_value()) Submit(action.pool, *std::move(action.admit));
  }

  void Submit(ModelPool* pool, AdmitTicket ticket) {
    absl::StatusOr<uint64_t> handle = pool->controller().Admit(
        std::move(ticket),
        [this](AdmitOutcome outcome) { OnOutcome(std::move(outcome)); });
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      if (!handle.ok()) {  // not accepted: the callback never runs
        admit_pending_ = false;
        RejectLocked(ExtProcGate::AdmitError(handle.status()));
        MaybeFinishLocked();
      } else if (admit_pending_ && *handle != 0) {  // queued
        handle_ = *handle;
        if (reads_done_ || cancelled_) {
          cancel = true;
        } else {
          ExtendLocked();
        }
      }
    }
    // The stream ended before the handle was known.
    if (cancel) pool->controller().Cancel(*handle);
  }

  // The controller's answer; any thread, exactly once per Admit.
  void OnOutcome(AdmitOutcome outcome) {
    std::string release;
    ModelPool* pool = nullptr;
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      admit_pending_ = false;
      handle_ = 0;
      pool = pool_;
      if (finished_ || reads_done_ || cancelled_) {
        if (outcome.admitted) release = std::move(outcome.lease_id);
        last = done_;
      } else if (outcome.admitted) {
        state_ = State::kAdmitted;
        lease_id_ = std::move(outcome.lease_id);
        reserved_bytes_ = outcome.reserved_bytes;
        AnswerHeldLocked();
      } else if (outcome.reason != RejectReason::kCancelled) {
        RejectLocked(RejectionError(outcome));
      }
    }
    if (!release.empty())
      pool->controller().Release(release).status().IgnoreError();
    if (last) delete this;
  }

  // Admitted: each held body (or trailers) message is answered CONTINUE; the
  // last body answer carries the x-kvgate-* headers for the upstream request.
  // With a rewritten body (the gate wrote max_tokens), the last body answer
  // carries it whole with its content-length, and earlier chunks (STREAMED
  // mode) are cleared.
  void AnswerHeldLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t last_body = held_.size();
    for (size_t i = 0; i < held_.size(); ++i) {
      if (held_[i] == ExtProcPhase::kRequestBody) last_body = i;
    }
    for (size_t i = 0; i < held_.size(); ++i) {
      ProcessingResponse response = ContinueResponse(held_[i]);
      if (held_[i] == ExtProcPhase::kRequestBody &&
          replacement_body_.has_value()) {
        auto* common = response.mutable_request_body()->mutable_response();
        if (i == last_body) {
          ReplaceRequestBody(*std::move(replacement_body_), *common);
        } else {
          common->mutable_body_mutation()->set_clear_body(true);
        }
      }
      if (i == last_body) {
        AddAdmittedHeaders(reserved_bytes_, *response.mutable_request_body()
                                                 ->mutable_response()
                                                 ->mutable_header_mutation());
      }
      WriteLocked(std::move(response));
    }
    held_.clear();
    replacement_body_.reset();
  }

  // The response is complete: its lease goes back (once).
  Action ReleaseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Action action;
    action.pool = pool_;
    action.release_lease = std::move(lease_id_);
    lease_id_.clear();
    return action;
  }

  // The stream is over, however it ended: leave the queue, free the lease.
  void Abandon() {
    uint64_t handle = 0;
    Action action;
    {
      absl::MutexLock lock(&mu_);
      if (admit_pending_) handle = handle_;
      action = ReleaseLocked();
    }
    if (handle != 0) action.pool->controller().Cancel(handle);
    Run(std::move(action));
  }

  // Asks Envoy to wait for the held message up to max_hold (+ margin). Envoy
  // honours one override per processing state, so it is sent once.
  void ExtendLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (extended_) return;
    extended_ = true;
    WriteLocked(
        ExtendTimeout(service_->gate_.options().max_hold + kHoldTimeoutMargin));
  }

  void RejectLocked(const HttpError& error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    state_ = State::kAnswered;
    held_.clear();
    std::string().swap(body_);
    WriteLocked(ImmediateError(error));
  }

  void WriteLocked(ProcessingResponse response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    writes_.push_back(std::move(response));
    if (!writing_) {
      writing_ = true;
      HandOff(this);
      StartWrite(&writes_.front());
    }
  }

  // Finishes once Envoy is gone or done sending and every answer is out.
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || !(reads_done_ || cancelled_)) return;
    finished_ = true;
    HandOff(this);
    Finish(grpc::Status::OK);
  }

  ExtProcService* const service_;
  const std::string request_id_;
  // The read buffer, used only between StartRead and OnReadDone.
  ProcessingRequest request_;

  absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kHeaders;
  GatedRequest gated_ ABSL_GUARDED_BY(mu_);  // once kBody
  std::string body_ ABSL_GUARDED_BY(mu_);
  // The body to forward instead of the client's (ExtProcAdmit::body).
  std::optional<std::string> replacement_body_ ABSL_GUARDED_BY(mu_);
  // Request messages whose answers wait for the decision, in order.
  std::vector<ExtProcPhase> held_ ABSL_GUARDED_BY(mu_);
  bool extended_ ABSL_GUARDED_BY(mu_) = false;

  ModelPool* pool_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool admit_pending_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t handle_ ABSL_GUARDED_BY(mu_) = 0;   // while queued
  std::string lease_id_ ABSL_GUARDED_BY(mu_);  // until released
  uint64_t reserved_bytes_ ABSL_GUARDED_BY(mu_) = 0;

  std::deque<ProcessingResponse> writes_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

ExtProcService::ExtProcService(const ModelRegistry* registry, Clock* clock,
                               ExtProcOptions options)
    : gate_(registry, std::move(options)),
      clock_(clock),
      id_prefix_(RandomPrefix()) {}

grpc::ServerBidiReactor<ProcessingRequest, ProcessingResponse>*
ExtProcService::Process(grpc::CallbackServerContext* /*context*/) {
  return new Stream(this, absl::StrCat(id_prefix_, "-", next_stream_++));
}

}  // namespace kvgate
