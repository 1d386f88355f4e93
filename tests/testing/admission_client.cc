#include "tests/testing/admission_client.h"

#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "plugin/base/handoff.h"

namespace kvgate {
namespace {

// Longest wait for a call that was given a deadline (or cancelled) to
// complete past that deadline: gRPC then completes it at once, so running
// out of this means a hung client library or server.
constexpr absl::Duration kCompletionGrace = absl::Seconds(10);

}  // namespace

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

void AddBearerToken(grpc::ClientContext& context, const std::string& token) {
  if (!token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
  }
}

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

kvgate::v1::AdmitRequest WithQueueWait(kvgate::v1::AdmitRequest request,
                                       absl::Duration wait) {
  request.mutable_max_queue_wait()->set_seconds(
      absl::IDivDuration(wait, absl::Seconds(1), &wait));
  request.mutable_max_queue_wait()->set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(wait)));
  return request;
}

kvgate::v1::AdmitRequest AdmitRequestOf(const std::string& request_id,
                                        const std::string& model,
                                        const std::string& tenant,
                                        kvgate::v1::Priority priority,
                                        int sequences, uint32_t prompt_tokens,
                                        uint32_t max_new_tokens) {
  kvgate::v1::AdmitRequest r;
  r.set_request_id(request_id);
  r.set_model(model);
  r.set_tenant(tenant);
  r.set_priority(priority);
  for (int i = 0; i < sequences; ++i) {
    kvgate::v1::Sequence* s = r.add_sequences();
    s->set_prompt_tokens(prompt_tokens);
    s->set_max_new_tokens(max_new_tokens);
  }
  return r;
}

// ---------------------------------------------------------------------------
// AdmissionClient.

std::unique_ptr<grpc::ClientContext> AdmissionClient::NewContext(
    const std::string& token) const {
  auto context = std::make_unique<grpc::ClientContext>();
  SetDeadline(*context, timeout_);
  AddBearerToken(*context, token);
  return context;
}

grpc::Status AdmissionClient::Admit(const kvgate::v1::AdmitRequest& request,
                                    kvgate::v1::AdmitResponse* response,
                                    const std::string& token) const {
  return stub_->Admit(NewContext(token).get(), request, response);
}

std::string AdmissionClient::AdmitOrFail(
    const kvgate::v1::AdmitRequest& request, const std::string& token) const {
  kvgate::v1::AdmitResponse response;
  const grpc::Status status = Admit(request, &response, token);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED)
      << response.ShortDebugString();
  return response.lease_id();
}

grpc::Status AdmissionClient::Release(const std::string& lease_id,
                                      uint64_t* released_bytes,
                                      const std::string& token) const {
  kvgate::v1::ReleaseRequest request;
  request.set_lease_id(lease_id);
  kvgate::v1::ReleaseResponse response;
  const grpc::Status status =
      stub_->Release(NewContext(token).get(), request, &response);
  *released_bytes = response.released_bytes();
  return status;
}

grpc::Status AdmissionClient::Renew(const std::string& lease_id,
                                    absl::Duration* ttl) const {
  kvgate::v1::RenewRequest request;
  request.set_lease_id(lease_id);
  kvgate::v1::RenewResponse response;
  const grpc::Status status =
      stub_->Renew(NewContext().get(), request, &response);
  if (ttl != nullptr) *ttl = FromProto(response.ttl());
  return status;
}

grpc::Status AdmissionClient::GetBudget(const std::string& model,
                                        kvgate::v1::Budget* budget) const {
  kvgate::v1::GetBudgetRequest request;
  request.set_model(model);
  return stub_->GetBudget(NewContext().get(), request, budget);
}

kvgate::v1::Budget AdmissionClient::GetBudgetOrFail(
    const std::string& model) const {
  kvgate::v1::Budget budget;
  const grpc::Status status = GetBudget(model, &budget);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return budget;
}

grpc::Status AdmissionClient::Estimate(
    const kvgate::v1::EstimateRequest& request,
    kvgate::v1::EstimateResponse* response) const {
  return stub_->Estimate(NewContext().get(), request, response);
}

// ---------------------------------------------------------------------------
// PendingAdmit.

// What the completion callback shares with the PendingAdmit.
struct PendingAdmit::Completion {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  grpc::Status status ABSL_GUARDED_BY(mu);
};

// What gRPC writes to: owned by the PendingAdmit, not by the callback (a
// ClientContext must not be destroyed inside gRPC, with the callback).
struct PendingAdmit::Call {
  grpc::ClientContext context;
  kvgate::v1::AdmitRequest request;
  kvgate::v1::AdmitResponse response;
  std::shared_ptr<Completion> completion;
};

PendingAdmit::PendingAdmit(kvgate::v1::Admission::Stub* stub,
                           kvgate::v1::AdmitRequest request,
                           const std::string& token, absl::Duration timeout)
    : call_(std::make_unique<Call>()),
      completion_(std::make_shared<Completion>()) {
  call_->request = std::move(request);
  call_->completion = completion_;
  if (timeout != absl::InfiniteDuration()) SetDeadline(call_->context, timeout);
  AddBearerToken(call_->context, token);
  HandOff(call_.get());  // the callback runs on a gRPC thread
  // One pointer captured: the callback then fits std::function's inline
  // buffer, written inside gRPC's callback tag, rather than a heap block
  // written here after the HandOff (which TSan reports).
  // The Call stays alive until the callback has set done (the destructor
  // waits for that, or leaks the Call).
  Call* raw = call_.get();
  stub->async()->Admit(
      &raw->context, &raw->request, &raw->response, [raw](grpc::Status status) {
        HandOffReceived(raw);
        // Kept alive past the unlock that wakes the owner.
        std::shared_ptr<Completion> completion = raw->completion;
        absl::MutexLock lock(&completion->mu);
        completion->status = std::move(status);
        completion->done = true;
      });
}

PendingAdmit::~PendingAdmit() {
  call_->context.TryCancel();
  if (!Answered(kCompletionGrace)) {
    ADD_FAILURE() << "(test) Admit '" << call_->request.request_id()
                  << "' not completed " << kCompletionGrace
                  << " after TryCancel";
    call_.release();  // leaked: gRPC may still use it
  }
}

bool PendingAdmit::Answered(absl::Duration wait) const {
  absl::MutexLock lock(&completion_->mu);
  return completion_->mu.AwaitWithTimeout(absl::Condition(&completion_->done),
                                          wait);
}

grpc::Status PendingAdmit::Wait(absl::Duration wait) const {
  if (!Answered(wait)) {
    return grpc::Status(
        grpc::StatusCode::DEADLINE_EXCEEDED,
        absl::StrCat("(test) no answer to Admit '", call_->request.request_id(),
                     "' within ", absl::FormatDuration(wait)));
  }
  absl::MutexLock lock(&completion_->mu);
  return completion_->status;
}

void PendingAdmit::Cancel() { call_->context.TryCancel(); }

const kvgate::v1::AdmitResponse& PendingAdmit::response() const {
  return call_->response;
}

}  // namespace kvgate
