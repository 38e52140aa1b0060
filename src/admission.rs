//! AdmissionReview parsing and response bytes (under construction).
