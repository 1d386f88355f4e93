#include "plugin/server/kvgate_service.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "plugin/base/handoff.h"
#include "plugin/server/admit_request.h"

namespace kvgate {
namespace {

using grpc::Status;
using grpc::StatusCode;

void ToProto(absl::Duration d, google::protobuf::Duration* out) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
}

Status Invalid(absl::string_view message) {
  return Status(StatusCode::INVALID_ARGUMENT, std::string(message));
}

// absl::Status from the estimator or controller -> grpc::Status.
Status FromAbsl(const absl::Status& s) {
  return Status(static_cast<StatusCode>(s.code()), std::string(s.message()));
}

// Translates a batch into estimator shapes. No heap allocation for batches
// of up to 16 sequences.
using Shapes = absl::InlinedVector<SequenceShape, 16>;

template <typename Seqs>
Status ToShapes(const Seqs& sequences, int max_sequences, Shapes* out) {
  if (sequences.empty()) {
    return Invalid("sequences: at least one sequence is required");
  }
  if (sequences.size() > max_sequences) {
    return Invalid(absl::StrCat("sequences: ", sequences.size(),
                                " sequences exceed the limit of ",
                                max_sequences, " per request"));
  }
  out->reserve(sequences.size());
  for (const auto& s : sequences) {
    out->push_back({s.prompt_tokens(), s.max_new_tokens()});
  }
  return Status::OK;
}

Status EstimateShapes(const ModelPool& pool, const Shapes& shapes,
                      BatchEstimate* estimate) {
  absl::Status s = pool.model().EstimateBatch(shapes, estimate);
  if (!s.ok()) return FromAbsl(s);
  return Status::OK;
}

// Fills an AdmitResponse from the controller's answer; the gRPC status of
// the call (CANCELLED for a request cancelled while queued, else OK).
Status ToResponse(AdmitOutcome outcome, kvgate::v1::AdmitResponse* response) {
  if (outcome.reason == RejectReason::kCancelled) {
    return Status(StatusCode::CANCELLED, "cancelled while queued");
  }
  response->set_decision(outcome.admitted ? kvgate::v1::ADMITTED
                                          : kvgate::v1::REJECTED);
  response->set_lease_id(std::move(outcome.lease_id));
  response->set_reason(std::string(RejectReasonName(outcome.reason)));
  response->set_reserved_bytes(outcome.reserved_bytes);
  if (!outcome.admitted) {
    ToProto(outcome.retry_after, response->mutable_retry_after());
  }
  // Left unset (reads as zero) for a request that never waited: no
  // sub-message to allocate and encode on the common path.
  if (outcome.queued_for > absl::ZeroDuration()) {
    ToProto(outcome.queued_for, response->mutable_queued_for());
  }
  response->set_message(std::move(outcome.message));
  return Status::OK;
}

// Finishes the call on gRPC's default reactor, inline (no thread hop).
grpc::ServerUnaryReactor* FinishInline(grpc::CallbackServerContext* context,
                                       const Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// Answers an Admit that arrives while draining: REJECTED/DRAINING.
grpc::ServerUnaryReactor* AnswerDraining(grpc::CallbackServerContext* context,
                                         kvgate::v1::AdmitResponse* response) {
  response->set_decision(kvgate::v1::REJECTED);
  response->set_reason("DRAINING");
  response->set_message("kvgated is shutting down");
  return FinishInline(context, Status::OK);
}

// Accounts the ticket to the authenticated caller's tenant; CRITICAL jumps
// the queue and sheds others, so it is kept only for callers allowed it.
void ApplyCaller(CallerIdentity* caller, AdmitTicket* ticket) {
  ticket->tenant = std::move(caller->tenant);
  if (!caller->allow_critical && ticket->priority == Priority::kCritical) {
    ticket->priority = Priority::kStandard;
  }
}

// The deadline is the earlier of the gRPC deadline and max_queue_wait (set
// by TicketFromRequest); the controller caps it further at its configured
// maximum.
void CapAtGrpcDeadline(const grpc::CallbackServerContext& context,
                       absl::Time now, AdmitTicket* ticket) {
  if (context.deadline() != std::chrono::system_clock::time_point::max()) {
    // The gRPC deadline is on the system clock; carry the remaining time
    // over to the injected clock.
    const absl::Duration left =
        absl::FromChrono(context.deadline()) - absl::Now();
    ticket->deadline = std::min(ticket->deadline, now + left);
  }
}

}  // namespace

// One Admit between the handler and the controller's callback. The callback
// runs either before the handler has looked (the common case: decided at
// once, on the handler's thread, or on another thread that freed bytes in the
// meantime) and leaves the outcome here, or after the handler has handed the
// call to an AdmitReactor, which it then finishes.
//
// Why two paths: a custom reactor's OnDone is scheduled on gRPC's executor
// thread (a thread hop per call, measured at about 7 us of server CPU per
// Admit on a 2-core machine, see bench/RESULTS.md), whereas the default
// reactor finishes inline. Only a request that waits in the queue needs a
// reactor of its own (for OnCancel).
struct AdmissionService::AdmitCall {
  enum State { kPending, kAnswered, kHandedOver };
  std::atomic<int> state{kPending};
  AdmitOutcome outcome;             // set by the callback before kAnswered
  AdmitReactor* reactor = nullptr;  // set by the handler before kHandedOver

  // The controller's callback: leaves the outcome for the handler, or, once
  // handed over, has the reactor finish the call.
  void Deliver(AdmitOutcome answer);
};

// A unary reactor for an Admit that waits in a controller's queue. The
// controller's callback fills the response and finishes the call, from
// whichever thread answers it; a client cancel (or an expired gRPC deadline)
// takes the entry out of the queue. Owns its AdmitCall.
class AdmissionService::AdmitReactor final : public grpc::ServerUnaryReactor {
 public:
  AdmitReactor(CallTracker* calls, std::unique_ptr<AdmitCall> call,
               Controller* controller, uint64_t handle, KvgateMetrics* metrics,
               Clock* clock, absl::Time start,
               kvgate::v1::AdmitResponse* response,
               grpc::CallbackServerContext* context)
      : calls_(calls),
        call_(std::move(call)),
        context_(context),
        controller_(controller),
        handle_(handle),
        metrics_(metrics),
        clock_(clock),
        start_(start),
        response_(response) {}

  void OnCancel() override {
    HandOffReceived(this);
    controller_->Cancel(handle_);
  }
  // A lease granted to a caller that was gone (cancelled, or past its
  // deadline) before the answer reached it is one it will never release:
  // give it back now rather than hold the bytes until the lease's TTL.
  void OnDone() override {
    HandOffReceived(this);
    if (!granted_lease_.empty() && context_->IsCancelled()) {
      controller_->Release(granted_lease_).IgnoreError();
    }
    CallTracker* calls = calls_;
    delete this;
    calls->End();
  }

  // For a reactor that was never returned to gRPC.
  std::unique_ptr<AdmitCall> TakeCall() { return std::move(call_); }

  void Answer(AdmitOutcome outcome) {
    if (outcome.admitted) granted_lease_ = outcome.lease_id;
    const Status status = ToResponse(std::move(outcome), response_);
    if (metrics_ != nullptr) {
      metrics_->ObserveAdmitDuration(clock_->Now() - start_);
    }
    HandOff(this);
    Finish(status);
  }

 private:
  CallTracker* const calls_;
  std::unique_ptr<AdmitCall> call_;
  grpc::CallbackServerContext* const context_;
  std::string granted_lease_;  // set when answered ADMITTED
  Controller* const controller_;
  const uint64_t handle_;
  KvgateMetrics* const metrics_;
  Clock* const clock_;
  const absl::Time start_;
  kvgate::v1::AdmitResponse* const response_;
};

void AdmissionService::AdmitCall::Deliver(AdmitOutcome answer) {
  outcome = std::move(answer);
  int expected = kPending;
  if (state.compare_exchange_strong(expected, kAnswered,
                                    std::memory_order_acq_rel)) {
    return;  // the handler picks the outcome up
  }
  // Handed over: the reactor (which owns this call) finishes the call.
  reactor->Answer(std::move(outcome));
}

AdmissionService::AdmissionService(const ModelRegistry* registry, Clock* clock,
                                   KvgateMetrics* metrics, Options options)
    : registry_(registry),
      clock_(clock),
      metrics_(metrics),
      options_(options) {}

Status AdmissionService::Authorize(grpc::CallbackServerContext* context,
                                   CallerIdentity* caller) const {
  if (options_.authenticator == nullptr) return Status::OK;
  absl::StatusOr<CallerIdentity> identity =
      options_.authenticator->Authenticate(context->auth_context().get(),
                                           context->client_metadata());
  if (!identity.ok()) return FromAbsl(identity.status());
  if (caller != nullptr) *caller = *std::move(identity);
  return Status::OK;
}

Status AdmissionService::FindPool(const std::string& model,
                                  ModelPool** pool) const {
  if (!ready_.load(std::memory_order_relaxed)) {
    return Status(StatusCode::UNAVAILABLE, "kvgated is not ready");
  }
  if (model.empty()) return Invalid("model: is required");
  *pool = registry_->Find(model);
  if (*pool == nullptr) {
    return Status(StatusCode::NOT_FOUND,
                  absl::StrCat("model: unknown model '",
                               model.substr(0, options_.max_id_bytes),
                               "'; served models: ", registry_->QuotedNames()));
  }
  return Status::OK;
}

absl::StatusOr<AdmitTicket> AdmissionService::MakeTicket(
    const grpc::CallbackServerContext& context,
    const kvgate::v1::AdmitRequest& request, const ModelPool& pool,
    CallerIdentity* caller, absl::Time now) const {
  absl::StatusOr<AdmitTicket> ticket = TicketFromRequest(
      request, pool.model(),
      AdmitRequestLimits{options_.max_sequences, options_.max_id_bytes}, now);
  if (!ticket.ok()) return ticket;
  ticket->cost =
      pool.LeaseCost(ticket->cost.kv_bytes, ticket->cost.activation_bytes);
  if (options_.authenticator != nullptr) {
    ApplyCaller(caller, &*ticket);
  }
  CapAtGrpcDeadline(context, now, &*ticket);
  return ticket;
}

grpc::ServerUnaryReactor* AdmissionService::Admit(
    grpc::CallbackServerContext* context,
    const kvgate::v1::AdmitRequest* request,
    kvgate::v1::AdmitResponse* response) {
  ModelPool* pool = nullptr;
  CallerIdentity caller;
  Status status = Authorize(context, &caller);
  if (status.ok()) status = FindPool(request->model(), &pool);
  const absl::Time now = clock_->Now();
  absl::StatusOr<AdmitTicket> ticket = absl::FailedPreconditionError("");
  if (status.ok()) {
    ticket = MakeTicket(*context, *request, *pool, &caller, now);
    if (!ticket.ok()) status = FromAbsl(ticket.status());
  }
  if (!status.ok()) return FinishInline(context, status);
  if (draining_.load(std::memory_order_relaxed)) {
    return AnswerDraining(context, response);
  }
  return AdmitToController(context, &pool->controller(), *std::move(ticket),
                           now, response);
}

grpc::ServerUnaryReactor* AdmissionService::AdmitToController(
    grpc::CallbackServerContext* context, Controller* controller,
    AdmitTicket&& ticket, absl::Time now, kvgate::v1::AdmitResponse* response) {
  auto call = std::make_unique<AdmitCall>();
  AdmitCall* raw = call.get();
  absl::StatusOr<uint64_t> handle = controller->Admit(
      std::move(ticket),
      [raw](AdmitOutcome outcome) { raw->Deliver(std::move(outcome)); });
  Status answer_status;
  if (!handle.ok()) {
    // The callback never runs.
    answer_status = FromAbsl(handle.status());
  } else {
    if (call->state.load(std::memory_order_acquire) != AdmitCall::kAnswered) {
      AdmitReactor* reactor =
          HandOver(context, controller, *handle, now, response, &call);
      if (reactor != nullptr) return reactor;
    }
    answer_status = ToResponse(std::move(call->outcome), response);
  }
  if (metrics_ != nullptr) metrics_->ObserveAdmitDuration(clock_->Now() - now);
  return FinishInline(context, answer_status);
}

AdmissionService::AdmitReactor* AdmissionService::HandOver(
    grpc::CallbackServerContext* context, Controller* controller,
    uint64_t handle, absl::Time now, kvgate::v1::AdmitResponse* response,
    std::unique_ptr<AdmitCall>* call) {
  AdmitCall* raw = call->get();
  auto* reactor =
      new AdmitReactor(&calls_, std::move(*call), controller, handle, metrics_,
                       clock_, now, response, context);
  raw->reactor = reactor;
  HandOff(reactor);  // to gRPC, which runs OnCancel/OnDone
  calls_.Begin();    // ended by the reactor's OnDone
  int expected = AdmitCall::kPending;
  if (raw->state.compare_exchange_strong(expected, AdmitCall::kHandedOver,
                                         std::memory_order_acq_rel)) {
    return reactor;
  }
  calls_.End();
  // Answered after all: the reactor was never returned to gRPC.
  *call = reactor->TakeCall();
  delete reactor;
  return nullptr;
}

grpc::ServerUnaryReactor* AdmissionService::Release(
    grpc::CallbackServerContext* context,
    const kvgate::v1::ReleaseRequest* request,
    kvgate::v1::ReleaseResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (Status auth = Authorize(context, nullptr); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  if (request->lease_id().empty()) {
    reactor->Finish(Invalid("lease_id: is required"));
    return reactor;
  }
  if (!ready_.load(std::memory_order_relaxed)) {
    reactor->Finish(Status(StatusCode::UNAVAILABLE, "kvgated is not ready"));
    return reactor;
  }
  // Lease ids are unique per controller; a pool that never issued the id
  // answers NotFound and the next one is asked.
  for (const auto& pool : registry_->pools()) {
    absl::StatusOr<uint64_t> freed =
        pool->controller().Release(request->lease_id());
    if (freed.ok()) {
      response->set_released_bytes(*freed);
      reactor->Finish(Status::OK);
      return reactor;
    }
    if (freed.status().code() != absl::StatusCode::kNotFound) {
      reactor->Finish(FromAbsl(freed.status()));
      return reactor;
    }
  }
  reactor->Finish(Status(StatusCode::NOT_FOUND, "lease_id: unknown lease"));
  return reactor;
}

grpc::ServerUnaryReactor* AdmissionService::Renew(
    grpc::CallbackServerContext* context,
    const kvgate::v1::RenewRequest* request,
    kvgate::v1::RenewResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (Status auth = Authorize(context, nullptr); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  if (request->lease_id().empty()) {
    reactor->Finish(Invalid("lease_id: is required"));
    return reactor;
  }
  if (!ready_.load(std::memory_order_relaxed)) {
    reactor->Finish(Status(StatusCode::UNAVAILABLE, "kvgated is not ready"));
    return reactor;
  }
  for (const auto& pool : registry_->pools()) {
    absl::StatusOr<absl::Duration> ttl =
        pool->controller().Renew(request->lease_id());
    if (ttl.ok()) {
      ToProto(*ttl, response->mutable_ttl());
      reactor->Finish(Status::OK);
      return reactor;
    }
  }
  reactor->Finish(Status(StatusCode::NOT_FOUND,
                         "lease_id: unknown, released or expired lease"));
  return reactor;
}

grpc::ServerUnaryReactor* AdmissionService::GetBudget(
    grpc::CallbackServerContext* context,
    const kvgate::v1::GetBudgetRequest* request, kvgate::v1::Budget* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  ModelPool* pool = nullptr;
  Status status = Authorize(context, nullptr);
  if (status.ok()) status = FindPool(request->model(), &pool);
  if (!status.ok()) {
    reactor->Finish(status);
    return reactor;
  }
  const BudgetSnapshot s = pool->controller().Snapshot();
  response->set_capacity_bytes(s.capacity_bytes);
  response->set_weights_bytes(pool->model().weights_bytes());
  response->set_reserved_bytes(s.reserved_bytes);
  response->set_free_bytes(s.free_bytes);
  response->set_device_free_bytes(pool->device_free_bytes());
  response->set_active_leases(s.active_leases);
  response->set_queued_requests(s.queued_requests);
  response->set_activation_reserve_bytes(s.activation_reserve_bytes);
  reactor->Finish(Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AdmissionService::Estimate(
    grpc::CallbackServerContext* context,
    const kvgate::v1::EstimateRequest* request,
    kvgate::v1::EstimateResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  ModelPool* pool = nullptr;
  Shapes shapes;
  BatchEstimate estimate;
  Status status = Authorize(context, nullptr);
  if (status.ok()) status = FindPool(request->model(), &pool);
  if (status.ok())
    status = ToShapes(request->sequences(), options_.max_sequences, &shapes);
  if (status.ok()) status = EstimateShapes(*pool, shapes, &estimate);
  if (status.ok()) {
    response->set_kv_cache_bytes(estimate.kv_cache_bytes);
    response->set_activation_bytes(estimate.activation_bytes);
    response->set_total_bytes(estimate.total_bytes);
    response->set_kv_cache_bytes_per_token(
        pool->model().kv_cache_bytes_per_token());
    response->set_kv_cache_tokens(estimate.kv_cache_tokens);
    response->set_weights_bytes(pool->model().weights_bytes());
  }
  reactor->Finish(status);
  return reactor;
}

}  // namespace kvgate
