//! Result codes: one stable, documented code for every outcome of every event.
//!
//! The numeric value and the snake_case name of a code never change once released; new codes are
//! appended. The HTTP API and the journal both use them.

use core::fmt;

macro_rules! result_codes {
    ($( $(#[$doc:meta])* $variant:ident = $value:literal, $name:literal, $message:literal; )*) => {
        /// The outcome of one event (account creation, transfer, status change) in a batch.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum ResultCode {
            $( $(#[$doc])* $variant = $value, )*
        }

        impl ResultCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ResultCode] = &[ $( ResultCode::$variant, )* ];

            /// The stable machine-readable name, e.g. `exceeds_credits`.
            pub fn as_str(self) -> &'static str {
                match self { $( ResultCode::$variant => $name, )* }
            }

            /// A sentence a person understands.
            pub fn message(self) -> &'static str {
                match self { $( ResultCode::$variant => $message, )* }
            }

            /// The code from its stable numeric value.
            pub fn from_u8(value: u8) -> Option<ResultCode> {
                match value { $( $value => Some(ResultCode::$variant), )* _ => None }
            }

            /// The code from its stable name.
            pub fn from_name(name: &str) -> Option<ResultCode> {
                match name { $( $name => Some(ResultCode::$variant), )* _ => None }
            }
        }
    };
}

result_codes! {
    /// The event was applied.
    Ok = 0, "ok", "the event was applied";
    /// The same event (same id, same fields) was applied before; the original is returned.
    Exists = 1, "exists", "an identical event with this id was already applied; nothing changed";
    /// Same id, but one is a single-phase transfer and the other pending, post or void.
    ExistsWithDifferentKind = 2, "exists_with_different_kind", "this id is already used by a transfer of another kind";
    /// Same id, different pending transfer referenced.
    ExistsWithDifferentPendingId = 3, "exists_with_different_pending_id", "this id is already used by a transfer against another pending transfer";
    /// Same id, different pending timeout.
    ExistsWithDifferentTimeout = 4, "exists_with_different_timeout", "this id is already used by a pending transfer with another timeout";
    /// Same id, different debit or credit account.
    ExistsWithDifferentAccounts = 5, "exists_with_different_accounts", "this id is already used by a transfer between other accounts";
    /// Same id, different amount.
    ExistsWithDifferentAmount = 6, "exists_with_different_amount", "this id is already used by a transfer of another amount";
    /// Same id, different currency.
    ExistsWithDifferentCurrency = 7, "exists_with_different_currency", "this id is already used with another currency";
    /// Same id, different business code.
    ExistsWithDifferentCode = 8, "exists_with_different_code", "this id is already used by a transfer with another code";
    /// Same id, different metadata.
    ExistsWithDifferentMetadata = 9, "exists_with_different_metadata", "this id is already used with other metadata";
    /// Same id, different ISO 20022 references.
    ExistsWithDifferentReferences = 10, "exists_with_different_references", "this id is already used with other payment references";
    /// Same account id, different flags.
    ExistsWithDifferentFlags = 11, "exists_with_different_flags", "this account id is already used with other flags";
    /// Same account id, different overdraft or credit limit.
    ExistsWithDifferentLimit = 12, "exists_with_different_limit", "this account id is already used with another limit";
    /// An account named by the event does not exist.
    AccountNotFound = 13, "account_not_found", "the account does not exist";
    /// The transfer's currency differs from an account's.
    CurrencyMismatch = 14, "currency_mismatch", "the transfer's currency must equal both accounts' currency";
    /// Debit and credit account are the same.
    SameAccount = 15, "same_account", "the debit and credit accounts must differ";
    /// The debit would take an account flagged debits_must_not_exceed_credits below its floor.
    ExceedsCredits = 16, "exceeds_credits", "the debit account's debits would exceed its credits plus its limit (insufficient funds)";
    /// The credit would take an account flagged credits_must_not_exceed_debits past its ceiling.
    ExceedsDebits = 17, "exceeds_debits", "the credit account's credits would exceed its debits plus its limit";
    /// An account is frozen and accepts no new transfers.
    AccountFrozen = 18, "account_frozen", "the account (or an account of the transfer) is frozen";
    /// An account is closed.
    AccountClosed = 19, "account_closed", "the account (or an account of the transfer) is closed";
    /// The pending transfer to post or void does not exist.
    PendingNotFound = 20, "pending_not_found", "the pending transfer does not exist";
    /// The pending transfer was already posted.
    PendingAlreadyPosted = 21, "pending_already_posted", "the pending transfer was already posted";
    /// The pending transfer was already voided.
    PendingAlreadyVoided = 22, "pending_already_voided", "the pending transfer was already voided";
    /// The pending transfer's timeout passed; its hold was released.
    PendingExpired = 23, "pending_expired", "the pending transfer expired and its hold was released";
    /// A post asked for more than the pending amount.
    PostAmountExceedsPending = 24, "post_amount_exceeds_pending", "the amount to post exceeds the pending amount";
    /// Another event of this linked chain failed, so this one was not applied.
    LinkedEventFailed = 25, "linked_event_failed", "another transfer in this linked chain failed, so none was applied";
    /// The batch ended inside a linked chain (the last event has `linked` set).
    LinkedEventChainOpen = 26, "linked_event_chain_open", "the last transfer of a batch must not be linked";
    /// The amount is zero (or missing where required).
    AmountMustBePositive = 27, "amount_must_be_positive", "the amount must be a positive integer number of minor units";
    /// A balance would overflow.
    Overflow = 28, "overflow", "the transfer would overflow an account balance";
    /// The referenced transfer is not a pending transfer.
    PendingTransferNotPending = 29, "pending_transfer_not_pending", "the referenced transfer is not a pending transfer";
    /// A post or void named accounts other than the pending transfer's.
    PendingTransferHasDifferentAccounts = 30, "pending_transfer_has_different_accounts", "the accounts differ from the pending transfer's";
    /// Both floor flags were set on one account.
    FlagsAreMutuallyExclusive = 31, "flags_are_mutually_exclusive", "debits_must_not_exceed_credits and credits_must_not_exceed_debits cannot both be set";
    /// Metadata is larger than the limit.
    MetadataTooLarge = 32, "metadata_too_large", "the metadata is larger than the limit";
    /// An ISO 20022 reference is malformed (EndToEndId over 35 characters).
    ReferenceInvalid = 33, "reference_invalid", "the end-to-end id must be 1-35 characters";
    /// A pending timeout is above the limit.
    TimeoutTooLarge = 34, "timeout_too_large", "the pending timeout is longer than the limit";
    /// A timeout was given on a transfer that is not pending.
    TimeoutReservedForPending = 35, "timeout_reserved_for_pending", "only pending transfers can have a timeout";
    /// Debit or credit account missing on a single-phase or pending transfer.
    AccountRequired = 36, "account_required", "a debit and a credit account are required";
    /// Currency missing on a single-phase or pending transfer.
    CurrencyRequired = 37, "currency_required", "the currency is required";
    /// The account still has pending holds; void or post them first.
    AccountHasPending = 38, "account_has_pending", "the account has pending transfers; post or void them first";
    /// The account's posted balance is not zero; move the funds out first.
    AccountBalanceNotZero = 39, "account_balance_not_zero", "the account balance must be zero to close it";
    /// The limit is only meaningful with a floor flag.
    LimitRequiresFlag = 40, "limit_requires_flag", "a limit needs debits_must_not_exceed_credits or credits_must_not_exceed_debits";
    /// The ledger holds as many accounts or transfers as it can index.
    CapacityExceeded = 41, "capacity_exceeded", "the ledger is full; no more events of this kind can be stored";
    /// Risk control declined the transfer (set by the risk layer, never by the ledger itself).
    RiskDeclined = 42, "risk_declined", "risk control declined the transfer";
    /// An amount was given on a void (a void always releases the whole hold).
    AmountReservedForPost = 43, "amount_reserved_for_post", "a void releases the whole hold and takes no amount";
}

impl ResultCode {
    /// Whether this is `ok` or `exists` (the event is in the ledger).
    pub fn is_success(self) -> bool {
        matches!(self, ResultCode::Ok | ResultCode::Exists)
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_by_value_and_name() {
        for (i, code) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(*code as u8 as usize, i, "values are dense and ordered");
            assert_eq!(ResultCode::from_u8(*code as u8), Some(*code));
            assert_eq!(ResultCode::from_name(code.as_str()), Some(*code));
            assert!(!code.message().is_empty());
        }
        assert_eq!(ResultCode::from_u8(250), None);
    }
}
