// libFuzzer target: the Admit path a client drives with a request's bytes.
//
// Bytes -> kvgate.v1.AdmitRequest -> TicketFromRequest (the service's own
// validation and estimate, plugin/server/admit_request.h) on llama-3-8b -> a
// Controller on a FakeClock with room for a few leases. The ticket is
// admitted three times (as sent, then as CRITICAL and SHEDDABLE copies under
// other ids) so that leases, the queue, shedding and rejections all occur;
// time moves on, every lease is released and every queued request times out.
// After every step the controller's invariants must hold; every ticket is
// answered exactly once; at the end nothing is reserved or queued.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "estimator/model_spec.h"
#include "estimator/serving.h"
#include "kvgate/v1/admission.pb.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/controller.h"
#include "plugin/server/admit_request.h"
#include "tests/testing/fake_clock.h"

namespace kvgate {
namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz_admit: %s\n", what);
    std::abort();
  }
}

void CheckOk(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "fuzz_admit: %s\n", status.ToString().c_str());
    std::abort();
  }
}

const ServingModel& Model() {
  static const ServingModel* const model = [] {
    absl::StatusOr<ModelSpec> spec = LoadPreset("llama-3-8b");
    CheckOk(spec.status());
    absl::StatusOr<ServingModel> serving =
        ServingModel::Create(*spec, ServingOptions{});
    CheckOk(serving.status());
    return new ServingModel(*std::move(serving));
  }();
  return *model;
}

class Harness {
 public:
  Harness() {
    Controller::Options options;
    options.capacity_bytes = uint64_t{4} << 30;  // ~32k tokens of llama-3-8b
    options.max_queue_requests = 2;
    options.max_queue_wait = absl::Seconds(30);
    options.lease_ttl = absl::Minutes(10);
    absl::StatusOr<std::unique_ptr<Controller>> controller =
        Controller::Create(options, &clock_);
    CheckOk(controller.status());
    controller_ = *std::move(controller);
  }

  void Admit(AdmitTicket ticket) {
    absl::StatusOr<uint64_t> handle =
        controller_->Admit(std::move(ticket), [this](AdmitOutcome outcome) {
          ++answered_;
          if (outcome.admitted) leases_.push_back(outcome.lease_id);
        });
    if (handle.ok()) ++submitted_;
    Invariants();
  }

  void ReleaseAll() {
    // A release may admit queued requests, which add leases: loop.
    while (!leases_.empty()) {
      const std::string lease = leases_.back();
      leases_.pop_back();
      CheckOk(controller_->Release(lease).status());
      absl::StatusOr<uint64_t> again = controller_->Release(lease);
      Check(again.ok() && *again == 0, "a second release frees nothing");
      Invariants();
    }
  }

  void Advance(absl::Duration d) {
    clock_.Advance(d);
    controller_->Tick();
    Invariants();
  }

  void Finish() {
    ReleaseAll();
    Advance(absl::Minutes(1));  // past every queue deadline
    ReleaseAll();
    const BudgetSnapshot budget = controller_->Snapshot();
    Check(budget.reserved_bytes == 0, "bytes still reserved");
    Check(budget.active_leases == 0, "leases still active");
    Check(budget.queued_requests == 0, "requests still queued");
    Check(answered_ == submitted_, "every ticket answered exactly once");
  }

  absl::Time Now() { return clock_.Now(); }

 private:
  void Invariants() { CheckOk(controller_->CheckInvariants()); }

  FakeClock clock_;
  std::unique_ptr<Controller> controller_;
  std::vector<std::string> leases_;
  int submitted_ = 0;
  int answered_ = 0;
};

}  // namespace
}  // namespace kvgate

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvgate::v1::AdmitRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  kvgate::Harness harness;
  absl::StatusOr<kvgate::AdmitTicket> ticket = kvgate::TicketFromRequest(
      request, kvgate::Model(), kvgate::AdmitRequestLimits{}, harness.Now());
  if (!ticket.ok()) return 0;
  kvgate::AdmitTicket critical = *ticket;
  critical.request_id += "#critical";
  critical.priority = kvgate::Priority::kCritical;
  kvgate::AdmitTicket sheddable = *ticket;
  sheddable.request_id += "#sheddable";
  sheddable.priority = kvgate::Priority::kSheddable;

  harness.Admit(*std::move(ticket));
  harness.Admit(std::move(sheddable));
  harness.Admit(std::move(critical));
  harness.Advance(absl::Seconds(1));
  harness.Finish();
  return 0;
}
