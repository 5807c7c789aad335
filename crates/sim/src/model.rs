//! What the simulator produces: accounts, transfers with their risk context, and ground-truth labels.

/// What an account is in the simulated market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccountKind {
    /// A person's wallet (legitimate, or opened and controlled by a fraudster: see
    /// [`Account::fraud_controlled`]).
    Individual,
    /// A micro-merchant (street food, grocery, repair shop…) taking QR payments.
    Merchant,
    /// A cash-in/cash-out agent: e-float in the wallet, cash in the drawer.
    Agent,
    /// An employer paying salaries.
    Employer,
    /// A biller (electricity, water, airtime, school, TV).
    Biller,
    /// An inbound international remittance corridor.
    RemittanceCorridor,
    /// The bank settlement account: the outside world (money in and out of the system).
    Settlement,
    /// Fee income.
    Fees,
    /// The promotion budget paying cashback on QR payments.
    Promotions,
}

impl AccountKind {
    /// Stable name (JSONL/CSV).
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Individual => "individual",
            AccountKind::Merchant => "merchant",
            AccountKind::Agent => "agent",
            AccountKind::Employer => "employer",
            AccountKind::Biller => "biller",
            AccountKind::RemittanceCorridor => "remittance_corridor",
            AccountKind::Settlement => "settlement",
            AccountKind::Fees => "fees",
            AccountKind::Promotions => "promotions",
        }
    }
}

/// An account of the simulated population.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Ledger id (`[A-Za-z0-9_.:-]`, at most 16 bytes, so a tenant prefix still fits).
    pub id: String,
    /// What it is.
    pub kind: AccountKind,
    /// A wallet: it may not go below zero (`debits_must_not_exceed_credits`). System accounts
    /// (settlement, employers, corridors, fees, promotions) stand for the outside world and have no
    /// floor.
    pub wallet: bool,
    /// KYC tier 1 (light), 2 or 3 (full); 0 for system accounts.
    pub kyc_tier: u8,
    /// Region (a district: people mostly pay merchants and friends of their own region).
    pub region: u32,
    /// Opened and operated by a fraudster (mule, fake buyer, cash-out account). Ground truth only:
    /// nothing in a transfer says so.
    pub fraud_controlled: bool,
}

/// What a transfer is, economically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransferKind {
    /// Opening balance at the start of the simulation (settlement → wallet).
    Opening,
    /// Salary (employer → wallet).
    Salary,
    /// Inbound international remittance (corridor → wallet).
    Remittance,
    /// Cash handed to an agent, e-money to the customer (agent → wallet).
    CashIn,
    /// E-money to an agent, cash to the customer (wallet → agent).
    CashOut,
    /// Person to person.
    P2p,
    /// Bill payment (wallet → biller).
    BillPayment,
    /// QR payment at a merchant (wallet → merchant).
    MerchantPayment,
    /// A fee (cash-out fee, merchant discount) to the fee account.
    Fee,
    /// Cashback from the promotion budget.
    Cashback,
    /// A merchant's daily payout to its bank account (merchant → settlement).
    Settlement,
    /// An agent buying or selling e-float (settlement ↔ agent).
    Float,
}

impl TransferKind {
    /// Every kind, in a stable order (reports, tests).
    pub const ALL: [TransferKind; 12] = [
        TransferKind::Opening,
        TransferKind::Salary,
        TransferKind::Remittance,
        TransferKind::CashIn,
        TransferKind::CashOut,
        TransferKind::P2p,
        TransferKind::BillPayment,
        TransferKind::MerchantPayment,
        TransferKind::Fee,
        TransferKind::Cashback,
        TransferKind::Settlement,
        TransferKind::Float,
    ];

    /// Stable name (JSONL/CSV, and `txn_type` in the risk context).
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Opening => "opening",
            TransferKind::Salary => "salary",
            TransferKind::Remittance => "remittance",
            TransferKind::CashIn => "cash_in",
            TransferKind::CashOut => "cash_out",
            TransferKind::P2p => "p2p",
            TransferKind::BillPayment => "bill_payment",
            TransferKind::MerchantPayment => "merchant_payment",
            TransferKind::Fee => "fee",
            TransferKind::Cashback => "cashback",
            TransferKind::Settlement => "settlement",
            TransferKind::Float => "float",
        }
    }
}

/// An injected abuse typology: the ground-truth label of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Typology {
    /// Stolen credentials on a new device; the balance drained to a fresh payee, then cashed out.
    AccountTakeover,
    /// The victim's number moved to the fraudster's SIM; OTP-protected outflows far above the
    /// victim's usual amounts, to a fraudster account and an agent.
    SimSwap,
    /// Credential/card testing: a burst of tiny payments to digital-goods merchants.
    CardTesting,
    /// A mule ring: many scam victims pay each mule (fan-in), the mules consolidate into a
    /// collector within hours, the collector cashes out at several agents (fan-out).
    MuleNetwork,
    /// Cash deposits of 80–99 % of the reporting threshold at different agents, then one outflow.
    Structuring,
    /// Fake sales: fraudster-controlled buyers on a few shared phones pay a colluding merchant to
    /// farm cashback; the merchant sends the money back round.
    MerchantCollusion,
}

impl Typology {
    /// Every typology, in a stable order.
    pub const ALL: [Typology; 6] = [
        Typology::AccountTakeover,
        Typology::SimSwap,
        Typology::CardTesting,
        Typology::MuleNetwork,
        Typology::Structuring,
        Typology::MerchantCollusion,
    ];

    /// Stable name (labels in JSONL/CSV).
    pub fn as_str(self) -> &'static str {
        match self {
            Typology::AccountTakeover => "account_takeover",
            Typology::SimSwap => "sim_swap",
            Typology::CardTesting => "card_testing",
            Typology::MuleNetwork => "mule_network",
            Typology::Structuring => "structuring",
            Typology::MerchantCollusion => "merchant_collusion",
        }
    }

    /// The typology named `name` (as [`Typology::as_str`] spells it).
    pub fn parse(name: &str) -> Option<Typology> {
        Typology::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Its position in [`Typology::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What risk control sees about a transfer: the fields of the API's `risk_context`
/// (`crates/api/src/risk.rs`, `RiskContext`) plus `txn_type` among its free attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskContext {
    /// Device id of the initiating device.
    pub device_id: String,
    /// IP address (mobile networks: carrier-grade NAT, shared by many customers).
    pub ip: String,
    /// `app`, `ussd`, `web`, `agent` (done on an agent's phone), `pos`.
    pub channel: &'static str,
    /// ISO 3166 country of the network location.
    pub country: &'static str,
    /// Merchant category code, for merchant payments.
    pub mcc: Option<&'static str>,
    /// The payer's KYC tier (`1`, `2`, `3`).
    pub kyc_tier: u8,
    /// The transfer kind (`p2p`, `merchant_payment`, `cash_out`, …), sent as the attribute
    /// `txn_type`.
    pub txn_type: &'static str,
}

impl RiskContext {
    /// The attribute list the risk engine reads (`ctx.<name>` in rules), named as the API names
    /// them.
    pub fn attributes(&self) -> Vec<(String, String)> {
        let mut attributes = vec![
            ("device_id".to_string(), self.device_id.clone()),
            ("ip".to_string(), self.ip.clone()),
            ("channel".to_string(), self.channel.to_string()),
            ("country".to_string(), self.country.to_string()),
            ("kyc_tier".to_string(), self.kyc_tier.to_string()),
            ("txn_type".to_string(), self.txn_type.to_string()),
        ];
        if let Some(mcc) = self.mcc {
            attributes.push(("mcc".to_string(), mcc.to_string()));
        }
        attributes
    }
}

/// One simulated transfer, in event order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Position in the stream, from 0.
    pub seq: u64,
    /// Event time, Unix milliseconds (non-decreasing along the stream).
    pub timestamp_ms: u64,
    /// What it is.
    pub kind: TransferKind,
    /// Index of the debited account in [`crate::Population::accounts`].
    pub debit: u32,
    /// Index of the credited account.
    pub credit: u32,
    /// Amount in minor units of the simulation's currency (positive).
    pub amount_minor: u64,
    /// Present when a customer (or agent) initiates it: risk control decides these. Absent for
    /// system movements (salaries, settlements, fees, float, cashback, opening balances).
    pub context: Option<RiskContext>,
    /// Ground truth: the abuse this transfer is part of.
    pub label: Option<Typology>,
    /// Ground truth: which injected case (one account takeover, one mule ring…), numbered from 0.
    pub case_id: Option<u32>,
    /// A fee or cashback belongs to this earlier transfer (`seq`) and only happens if it did.
    pub parent_seq: Option<u64>,
}

impl Transfer {
    /// The transfer's id: `t` and the sequence number, zero-padded (sorts in event order).
    pub fn id(&self) -> String {
        format!("t{:010}", self.seq)
    }
}
