//! The exact context strings that bind ciphertexts and key wraps to what they protect
//! (`docs/keys.md`). Variable-length fields are `u32`-length-prefixed so no two contexts
//! encode the same way.

use medledger_codec::Writer;
use medledger_types::{IdentityId, RecordId};

/// Associated data of a record version's ciphertext.
pub fn record_aad(
    record: &RecordId,
    version: u32,
    patient: &IdentityId,
    custodian: &IdentityId,
    resource_type: &str,
) -> Vec<u8> {
    let mut w = Writer::new();
    w.fixed(b"medledger/record/v1").encode(record).u32(version).encode(patient).encode(custodian).str(resource_type);
    w.into_bytes()
}

/// Associated data of a data key wrapped under a category key.
pub fn data_key_aad(
    record: &RecordId,
    version: u32,
    custodian: &IdentityId,
    patient: &IdentityId,
    category: &str,
    epoch: u32,
) -> Vec<u8> {
    let mut w = Writer::new();
    w.fixed(b"medledger/data-key/v1").encode(record).u32(version).encode(custodian).encode(patient).str(category);
    w.u32(epoch);
    w.into_bytes()
}

/// HPKE `info` of a category key wrap (the recipient's id is the associated data).
pub fn category_key_info(custodian: &IdentityId, patient: &IdentityId, category: &str, epoch: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.fixed(b"medledger/category-key/v1").encode(custodian).encode(patient).str(category).u32(epoch);
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_differ_whenever_an_input_differs() {
        let (r, a, b) = (RecordId([1; 32]), IdentityId([2; 32]), IdentityId([3; 32]));
        let base = record_aad(&r, 1, &a, &b, "Observation");
        assert_ne!(base, record_aad(&r, 2, &a, &b, "Observation"));
        assert_ne!(base, record_aad(&r, 1, &b, &a, "Observation"));
        assert_ne!(base, record_aad(&r, 1, &a, &b, "Condition"));
        assert_ne!(category_key_info(&a, &b, "labs", 1), category_key_info(&a, &b, "labs", 2));
        assert_ne!(category_key_info(&a, &b, "labs", 1), category_key_info(&a, &b, "vitals", 1));
        assert_ne!(data_key_aad(&r, 1, &a, &b, "labs", 1), data_key_aad(&r, 1, &a, &b, "labs", 2));
    }
}
