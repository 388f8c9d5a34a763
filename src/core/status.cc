#include "arrowquant/status.h"

namespace arrowquant {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kIoError: return "IoError";
    case StatusCode::kUnsupported: return "Unsupported";
    case StatusCode::kInternal: return "Internal";
    case StatusCode::kFileTooSmall: return "FileTooSmall";
    case StatusCode::kHeaderTooLarge: return "HeaderTooLarge";
    case StatusCode::kHeaderOutOfBounds: return "HeaderOutOfBounds";
    case StatusCode::kHeaderNotUtf8: return "HeaderNotUtf8";
    case StatusCode::kHeaderInvalidJson: return "HeaderInvalidJson";
    case StatusCode::kHeaderInvalidEntry: return "HeaderInvalidEntry";
    case StatusCode::kUnknownDtype: return "UnknownDtype";
    case StatusCode::kShapeOverflow: return "ShapeOverflow";
    case StatusCode::kSizeMismatch: return "SizeMismatch";
    case StatusCode::kOffsetsInvalid: return "OffsetsInvalid";
    case StatusCode::kDataOutOfBounds: return "DataOutOfBounds";
    case StatusCode::kDataSizeMismatch: return "DataSizeMismatch";
    case StatusCode::kDuplicateName: return "DuplicateName";
    case StatusCode::kMetadataInvalid: return "MetadataInvalid";
    case StatusCode::kIndexInvalid: return "IndexInvalid";
    case StatusCode::kPathEscape: return "PathEscape";
    case StatusCode::kIndexMismatch: return "IndexMismatch";
    case StatusCode::kAmbiguousLayout: return "AmbiguousLayout";
    case StatusCode::kNotAModel: return "NotAModel";
    case StatusCode::kLimitExceeded: return "LimitExceeded";
    case StatusCode::kFormatInvalid: return "FormatInvalid";
    case StatusCode::kCorrupt: return "Corrupt";
    case StatusCode::kCancelled: return "Cancelled";
    case StatusCode::kThresholdMissed: return "ThresholdMissed";
    case StatusCode::kNonFinite: return "NonFinite";
    case StatusCode::kScaleOverflow: return "ScaleOverflow";
  }
  return "Unknown";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code_));
  out += ": ";
  out += message_;
  return out;
}

}  // namespace arrowquant
