"""Compact finding names for the DDXPlus evidence questions.

DDXPlus asks each evidence as a full question ("Do you have a fever (either felt or measured with
a thermometer)?"). Rendered verbatim, a median patient's 20 evidences cost about 250 prompt
tokens, and CPU training time grows with every token; these short names say the same thing in
about a third of the tokens ("fever"). Each name was written by hand from its question, keeping
every qualifier that changes the meaning (time windows, "family history of", "past").

The keys are the ``question_en`` texts of the public DDXPlus release (CC-BY 4.0, Fansi Tchango et
al., 2022), which the English release and the original French release (v0) share word for word,
so one table serves both. Questions not listed here (a later release, a site's own evidences) fall
back to :func:`feddx.data.ddxplus_names.derive_finding_name`.
"""

from __future__ import annotations

import re

SHORT_NAMES: dict[str, str] = {
    # Symptoms (is_antecedent false), in release order.
    "Do you have a fever (either felt or measured with a thermometer)?": "fever",  # E_91
    "Do you feel pain somewhere?": "pain location",  # E_55
    "Do you have pain somewhere, related to your reason for consulting?": "pain",  # E_53
    "Does the pain radiate to another location?": "pain radiates to",  # E_57
    "Characterize your pain:": "pain character",  # E_54
    "How fast did the pain appear?": "pain onset speed",  # E_59
    "How intense is the pain?": "pain intensity",  # E_56
    "How precisely is the pain located?": "pain localization precision",  # E_58
    "Did you lose consciousness?": "loss of consciousness",  # E_159
    "Where is the affected region located?": "skin lesion location",  # E_133
    "Do you have any lesions, redness or problems on your skin that you believe are related to the condition you are consulting for?": "skin lesions or redness",  # E_129
    "What color is the rash?": "rash color",  # E_130
    "How intense is the pain caused by the rash?": "rash pain",  # E_134
    "Is the rash swollen?": "rash swelling",  # E_132
    "How severe is the itching?": "itching severity",  # E_136
    "Is the lesion (or are the lesions) larger than 1cm?": "skin lesion over 1cm",  # E_135
    "Do your lesions peel off?": "peeling skin lesions",  # E_131
    "Is your skin much paler than usual?": "unusually pale skin",  # E_154
    "Do you feel your heart is beating fast (racing), irregularly (missing a beat) or do you feel palpitations?": "palpitations or fast/irregular heartbeat",  # E_155
    "Have you recently thrown up blood or something resembling coffee beans?": "vomiting blood or coffee-ground material",  # E_210
    "Have you recently had stools that were black (like coal)?": "black stools",  # E_140
    "Have you had diarrhea or an increase in stool frequency?": "diarrhea or more frequent stools",  # E_51
    "Do you feel like you are (or were) choking or suffocating?": "feeling of choking or suffocating",  # E_75
    "Do you constantly feel fatigued or do you have non-restful sleep?": "constant fatigue or non-restful sleep",  # E_89
    "Are you more irritable or has your mood been very unstable recently?": "irritability or unstable mood",  # E_114
    "Do you feel lightheaded and dizzy or do you feel like you are about to faint?": "lightheaded, about to faint",  # E_82
    "Are you feeling nauseous or do you feel like vomiting?": "nausea",  # E_148
    "Have you had chills or shivers?": "chills",  # E_94
    "Do you have pain that is increased when you breathe in deeply?": "pain worse on deep breathing",  # E_220
    "Have you recently had a loss of appetite or do you get full more quickly then usually?": "loss of appetite or early satiety",  # E_161
    "Have you noticed light red blood or blood clots in your stool?": "red blood or clots in stool",  # E_179
    "Have you had an involuntary weight loss over the last 3 months?": "involuntary weight loss (3 months)",  # E_162
    "Do you have a burning sensation that starts in your stomach then goes up into your throat, and can be associated with a bitter taste in your mouth?": "burning rising from stomach to throat",  # E_173
    "Do you have pain that improves when you lean forward?": "pain eased by leaning forward",  # E_33
    "Do you have symptoms that are increased with physical exertion but alleviated with rest?": "symptoms worse on exertion, eased by rest",  # E_218
    "Do you have numbness, loss of sensation or tingling in the feet?": "numbness or tingling in feet",  # E_93
    "Are you experiencing shortness of breath or difficulty breathing in a significant way?": "significant shortness of breath",  # E_66
    "Have you had any vaginal discharge?": "vaginal discharge",  # E_163
    "Do you feel your abdomen is bloated or distended (swollen due to pressure from inside)?": "bloated or distended abdomen",  # E_30
    "Do you feel that your eyes produce excessive tears?": "excessive tearing",  # E_127
    "Do you have nasal congestion or a clear runny nose?": "nasal congestion or clear runny nose",  # E_181
    "Do you feel so tired that you are unable to do your usual activities or are you stuck in your bed all day long?": "too tired for usual activities or bedridden",  # E_88
    "Have you lost consciousness associated with violent and sustained muscle contractions or had an absence episode?": "loss of consciousness with convulsions, or absence episode",  # E_43
    "Have you had weakness or paralysis on one side of the face, which may still be present or completely resolved?": "one-sided facial weakness or paralysis",  # E_156
    "Do you have diffuse (widespread) muscle pain?": "diffuse muscle pain",  # E_144
    "Do you have pain that is increased with movement?": "pain worse with movement",  # E_216
    "Do you have a cough?": "cough",  # E_201
    "Are your symptoms worse when lying down and alleviated while sitting up?": "symptoms worse lying down, eased sitting up",  # E_217
    "Do you have symptoms that get worse after eating?": "symptoms worse after eating",  # E_215
    "Do you feel out of breath with minimal physical effort?": "breathless on minimal effort",  # E_64
    "Have you gained weight recently?": "recent weight gain",  # E_96
    "Have you had significantly increased sweating?": "increased sweating",  # E_50
    "Do you have a sore throat?": "sore throat",  # E_97
    "Do you have swollen or painful lymph nodes?": "swollen or painful lymph nodes",  # E_9
    "Do you feel slightly dizzy or lightheaded?": "slightly dizzy or lightheaded",  # E_76
    "Do you have difficulty swallowing, or have a feeling of discomfort/blockage when swallowing?": "difficulty or discomfort swallowing",  # E_65
    "Have you noticed a diffuse (widespread) redness in one or both eyes?": "diffuse eye redness",  # E_74
    "Do you suddenly have difficulty or an inability to open your mouth or have jaw pain when opening it?": "difficulty opening mouth or jaw pain",  # E_205
    "Do you have difficulty articulating words/speaking?": "difficulty articulating words",  # E_63
    "Have you ever felt like you were suffocating for a very short time associated with inability to breathe or speak?": "brief suffocation, unable to breathe or speak",  # E_128
    "Have you noticed that you produce more saliva than usual?": "excess saliva",  # E_190
    "Have you felt confused or disorientated lately?": "confusion or disorientation",  # E_39
    "Have you noticed that the tone of your voice has become deeper, softer or hoarse?": "deeper, softer or hoarse voice",  # E_212
    "Do you have painful mouth ulcers or sores?": "painful mouth ulcers",  # E_206
    "Do you have the perception of seeing two images of a single object seen overlapping or adjacent to each other (double vision)?": "double vision",  # E_52
    "Do you have intense coughing fits?": "intense coughing fits",  # E_203
    "Do you have pain or weakness in your jaw?": "jaw pain or weakness",  # E_38
    "Do you have a hard time opening/raising one or both eyelids?": "difficulty opening eyelids",  # E_172
    "Do you feel weakness in both arms and/or both legs?": "weakness in both arms and/or legs",  # E_84
    "Do your symptoms of muscle weakness increase with fatigue and/or stress?": "muscle weakness worse with fatigue or stress",  # E_90
    "Have you vomited several times or have you made several efforts to vomit?": "repeated vomiting or retching",  # E_211
    "Did you vomit after coughing?": "vomiting after coughing",  # E_166
    "Do you wheeze while inhaling or is your breathing noisy after coughing spells?": "wheeze on inhaling or noisy breathing after coughing",  # E_112
    "Have you noticed any unusual bleeding or bruising related to your consultation today?": "unusual bleeding or bruising",  # E_178
    "Where is the swelling located?": "swelling location",  # E_152
    "Do you have swelling in one or more areas of your body?": "swelling",  # E_151
    "Have you been coughing up blood?": "coughing up blood",  # E_45
    "Have you noticed a high pitched sound when breathing in?": "high-pitched sound on breathing in",  # E_194
    "Have you noticed weakness in your facial muscles and/or eyes?": "weak facial or eye muscles",  # E_83
    "Have you recently had numbness, loss of sensation or tingling, in both arms and legs and around your mouth?": "numbness or tingling in limbs and around mouth",  # E_157
    "Did you previously, or do you currently, have any weakness/paralysis in one or more of your limbs or in your face?": "weakness or paralysis of limbs or face",  # E_176
    "Have you been in contact with or ate something that you have an allergy to?": "contact with or ate a known allergen",  # E_42
    "Have you noticed a wheezing sound when you exhale?": "wheezing on exhaling",  # E_214
    "Have you been able to pass stools or gas since your symptoms increased?": "able to pass stools or gas",  # E_150
    "Do you have a decrease in appetite?": "decreased appetite",  # E_32
    "Are the symptoms or pain increased with coughing, with an effort like lifting a weight or from forcing a bowel movement?": "symptoms worse with coughing, lifting or straining",  # E_221
    "Does the person have a whooping cough?": "whooping cough",  # E_202
    "Are your symptoms more prominent at night?": "symptoms worse at night",  # E_219
    "Do you have severe itching in one or both eyes?": "severe eye itching",  # E_170
    "Do you have a cough that produces colored or more abundant sputum than usual?": "cough with colored or more sputum",  # E_77
    "Do you find that your symptoms have worsened over the last 2 weeks and that progressively less effort is required to cause the symptoms?": "symptoms worse over 2 weeks, with less effort",  # E_13
    "Do you have chest pain even at rest?": "chest pain at rest",  # E_14
    "Is your nose or the back of your throat itchy?": "itchy nose or throat",  # E_169
    "Do you currently, or did you ever, have numbness, loss of sensitivity or tingling anywhere on your body?": "numbness or tingling anywhere",  # E_177
    "Have you noticed any new fatigue, generalized and vague discomfort, diffuse (widespread) muscle aches or a change in your general well-being related to your consultation today?": "new fatigue, malaise or diffuse aches",  # E_175
    "Have you been unintentionally losing weight or have you lost your appetite?": "weight loss or loss of appetite",  # E_174
    "Do you have very abundant or very long menstruation periods?": "heavy or long periods",  # E_145
    "Did your cheeks suddenly turn red?": "cheeks suddenly red",  # E_92
    "Do you feel that muscle spasms or soreness in your neck are keeping you from turning your head to one side?": "neck spasm or soreness limiting head turning",  # E_192
    "Do you have pale stools and dark urine?": "pale stools and dark urine",  # E_188
    "Do you feel your heart is beating very irregularly or in a disorganized pattern?": "very irregular heartbeat",  # E_164
    "Do you have annoying muscle spasms in your face, neck or any other part of your body?": "muscle spasms in face, neck or body",  # E_193
    "Do you have trouble keeping your tongue in your mouth?": "trouble keeping tongue in mouth",  # E_168
    "Are you unable to control the direction of your eyes?": "unable to control eye direction",  # E_180
    "Do you have bouts of choking or shortness of breath that wake you up at night?": "choking or breathlessness waking at night",  # E_67
    "Do you feel like you are detached from your own body or your surroundings?": "feeling detached from body or surroundings",  # E_171
    "Do you feel like you are dying or were you afraid that you were about do die?": "fear of dying",  # E_111
    "Do you have greenish or yellowish nasal discharge?": "green or yellow nasal discharge",  # E_182
    "Have you lost your sense of smell?": "loss of smell",  # E_103
    "Do you ever temporarily stop breathing while you’re asleep?": "stops breathing during sleep",  # E_23
    # Antecedents: history, risk factors and exposures.
    "Do you feel anxious?": "anxiety",  # E_16
    "Are you consulting because you have high blood pressure?": "consulting for high blood pressure",  # E_102
    "Have you had surgery within the last month?": "surgery in the last month",  # E_196
    "Do you drink alcohol excessively or do you have an addiction to alcohol?": "excessive alcohol use or addiction",  # E_78
    "Are you taking any new oral anticoagulants ((NOACs)?": "taking new oral anticoagulants",  # E_146
    "Have you ever had a heart attack or do you have angina (chest pain)?": "past heart attack or angina",  # E_105
    "Do you have a problem with poor circulation?": "poor circulation",  # E_108
    "Do you have high blood pressure or do you take medications to treat high blood pressure?": "high blood pressure",  # E_104
    "Do you smoke cigarettes?": "smokes cigarettes",  # E_79
    "Do you have high cholesterol or do you take medications to treat high cholesterol?": "high cholesterol",  # E_71
    "Have you been in contact with a person with similar symptoms in the past 2 weeks?": "contact with similarly ill person (2 weeks)",  # E_41
    "Do you currently take hormones?": "takes hormones",  # E_100
    "Do you have diabetes?": "diabetes",  # E_69
    "Do you think you are pregnant or are you currently pregnant?": "pregnant or possibly pregnant",  # E_167
    "Have you had unprotected sex with more than one partner in the last 6 months?": "unprotected sex, several partners (6 months)",  # E_115
    "Are you significantly overweight compared to people of the same height as you?": "significantly overweight",  # E_70
    "Are you currently taking or have you recently taken anti-inflammatory drugs (NSAIDs)?": "taking NSAIDs",  # E_10
    "Have any of your family members ever had a pneumothorax?": "family history of pneumothorax",  # E_165
    "Do you currently undergo dialysis?": "on dialysis",  # E_8
    "Have any of your family members been diagnosed with cluster headaches?": "family history of cluster headache",  # E_25
    "Do you take medication that dilates your blood vessels?": "takes vasodilators",  # E_184
    "Have you ever had a head trauma?": "past head trauma",  # E_185
    "Have you ever had a migraine or is a member of your family known to have migraines?": "migraine (self or family)",  # E_99
    "Have you ever had a stroke?": "past stroke",  # E_107
    "Are you more likely to develop common allergies than the general population?": "prone to allergies",  # E_226
    "Do you regularly take stimulant drugs?": "regular stimulant drug use",  # E_62
    "Do you attend or work in a daycare?": "attends or works in daycare",  # E_49
    "Do you have Parkinson’s disease?": "Parkinson's disease",  # E_95
    "Have you traveled out of the country in the last 4 weeks?": "travel abroad (4 weeks)",  # E_204
    "Do you have metastatic cancer?": "metastatic cancer",  # E_37
    "Are you being treated for osteoporosis?": "treated for osteoporosis",  # E_153
    "Do you have asthma or have you ever had to use a bronchodilator in the past?": "asthma or past bronchodilator use",  # E_124
    "Do you have a hiatal hernia?": "hiatal hernia",  # E_98
    "Have you had a cold in the last 2 weeks?": "cold in the last 2 weeks",  # E_116
    "Do you live with 4 or more people?": "lives with 4+ people",  # E_48
    "Are you infected with the human immunodeficiency virus (HIV)?": "HIV infection",  # E_2
    "Are you immunosuppressed?": "immunosuppressed",  # E_227
    "Are you currently using intravenous drugs?": "intravenous drug use",  # E_61
    "Do you suffer from Crohn’s disease or ulcerative colitis (UC)?": "Crohn's disease or ulcerative colitis",  # E_47
    "Have you ever had a sexually transmitted infection?": "past sexually transmitted infection",  # E_27
    "Do you exercise regularly, 4 times per week or more?": "exercises 4+ times a week",  # E_143
    "Are you a former smoker?": "former smoker",  # E_191
    "Is your BMI less than 18.5, or are you underweight?": "underweight (BMI < 18.5)",  # E_208
    "Do you have liver cirrhosis?": "liver cirrhosis",  # E_126
    "Have you had sexual intercourse with an HIV-positive partner in the past 12 months?": "sex with HIV-positive partner (12 months)",  # E_189
    "Do you have a poor diet?": "poor diet",  # E_7
    "Have you ever had a diagnosis of anemia?": "past anemia",  # E_24
    "Do you have any family members who have been diagnosed with anemia?": "family history of anemia",  # E_26
    "Do you have chronic kidney failure?": "chronic kidney failure",  # E_113
    "Were you born prematurely or did you suffer any complication at birth?": "premature birth or birth complication",  # E_160
    "Are there any members of your family who have been diagnosed myasthenia gravis?": "family history of myasthenia gravis",  # E_28
    "Do you have Rheumatoid Arthritis?": "rheumatoid arthritis",  # E_20
    "Have you ever been diagnosed with depression?": "past depression",  # E_80
    "Have you been in contact with someone who has had pertussis (whoooping cough)?": "contact with pertussis",  # E_40
    "Have you recently had a viral infection?": "recent viral infection",  # E_0
    "Are you currently being treated or have you recently been treated with an oral antibiotic for an ear infection?": "recent oral antibiotic for ear infection",  # E_1
    "Do you have an active cancer?": "active cancer",  # E_34
    "Are your vaccinations up to date?": "vaccinations up to date",  # E_209
    "Do you have a known heart defect?": "known heart defect",  # E_139
    "Have you been diagnosed with hyperthyroidism?": "hyperthyroidism",  # E_19
    "Do you have severe Chronic Obstructive Pulmonary Disease (COPD)?": "severe COPD",  # E_31
    "Do you have a known issue with one of your heart valves?": "heart valve problem",  # E_22
    "Do you consume energy drinks regularly?": "regular energy drinks",  # E_60
    "Do you regularly drink coffee or tea?": "regular coffee or tea",  # E_35
    "Have you recently taken decongestants or other substances that may have stimulant effects?": "recent decongestant or stimulant",  # E_213
    "Do you have a known severe food allergy?": "severe food allergy",  # E_12
    "Do you take corticosteroids?": "takes corticosteroids",  # E_44
    "Have you or any member of your family ever had croup?": "croup (self or family)",  # E_4
    "Do you suffer from chronic anxiety?": "chronic anxiety",  # E_81
    "Have you ever had deep vein thrombosis (DVT)?": "past deep vein thrombosis",  # E_109
    "Have you been unable to move or get up for more than 3 consecutive days within the last 4 weeks?": "immobile over 3 days (last 4 weeks)",  # E_110
    "Are you of Asian descent?": "Asian descent",  # E_17
    "Do you have cystic fibrosis?": "cystic fibrosis",  # E_18
    "Have you ever had pneumonia?": "past pneumonia",  # E_118
    "Do you have a chronic obstructive pulmonary disease (COPD)?": "COPD",  # E_123
    "Do you live in in a big city?": "lives in a big city",  # E_207
    "Do you have any close family members who suffer from allergies (any type), hay fever or eczema?": "family history of allergies, hay fever or eczema",  # E_86
    "Do you have any family members who have asthma?": "family history of asthma",  # E_87
    "Did you have your first menstrual period before the age of 12?": "first period before age 12",  # E_141
    "Have you breastfed one of your children for more than 9 months?": "breastfed a child over 9 months",  # E_11
    "Have you ever been diagnosed with obstructive sleep apnea (OSA)?": "obstructive sleep apnea",  # E_186
    "Do you have heart failure?": "heart failure",  # E_106
    "Were you diagnosed with endocrine disease or a hormone dysfunction?": "endocrine or hormone disorder",  # E_158
    "Did you eat dark-fleshed fish (such as tuna) or Swiss cheese before the reaction occurred?": "ate dark-fleshed fish or Swiss cheese before reaction",  # E_187
    "Do you have chronic pancreatitis?": "chronic pancreatitis",  # E_6
    "Have you ever been diagnosed with gastroesophageal reflux?": "gastroesophageal reflux",  # E_125
    "Have you ever had a spontaneous pneumothorax?": "past spontaneous pneumothorax",  # E_21
    "Are you exposed to secondhand cigarette smoke on a daily basis?": "daily secondhand smoke",  # E_222
    "Have you started or taken any antipsychotic medication within the last 7 days?": "antipsychotic in the last 7 days",  # E_15
    "Have you been treated in hospital recently for nausea, agitation, intoxication or aggressive behavior and received medication via an intravenous or intramuscular route?": "recent hospital IV/IM medication for nausea, agitation, intoxication or aggression",  # E_147
    "Have you ever had surgery to remove lymph nodes?": "lymph node removal surgery",  # E_137
    "Do you take a calcium channel blockers (medication)?": "takes calcium channel blockers",  # E_149
    "Do you have a known kidney problem resulting in an inability to retain proteins?": "kidney problem with protein loss",  # E_197
    "Have you ever had a pericarditis?": "past pericarditis",  # E_3
    "Do any members of your immediate family have a psychiatric illness?": "family history of psychiatric illness",  # E_29
    "Do you have close family members who had a cardiovascular disease problem before the age of 50?": "family cardiovascular disease before 50",  # E_225
    "In the last month, have you been in contact with anyone infected with the Ebola virus?": "Ebola contact (last month)",  # E_73
    "Do you suffer from fibromyalgia?": "fibromyalgia",  # E_138
    "Have you been hospitalized for an asthma attack in the past year?": "asthma hospitalization (past year)",  # E_101
    "Have you had 2 or more asthma attacks in the past year?": "2+ asthma attacks (past year)",  # E_46
    "Have you been diagnosed with chronic sinusitis?": "chronic sinusitis",  # E_119
    "Have you had one or several flare ups of chronic obstructive pulmonary disease (COPD) in the past year?": "COPD flare-ups (past year)",  # E_72
    "Do you work in agriculture?": "works in agriculture",  # E_198
    "Do you work in the mining sector?": "works in mining",  # E_200
    "Do you work in construction?": "works in construction",  # E_199
    "Do you have a deviated nasal septum?": "deviated nasal septum",  # E_121
    "Do you have polyps in your nose?": "nasal polyps",  # E_120
    "Does your mother suffer from asthma?": "mother has asthma",  # E_142
    "Do you live in the suburbs?": "lives in the suburbs",  # E_195
    "Do you live in a rural area?": "lives in a rural area",  # E_183
    "Do you have family members who have had lung cancer?": "family history of lung cancer",  # E_224
    "Are there members of your family who have been diagnosed with pancreatic cancer?": "family history of pancreatic cancer",  # E_223
    "Have you ever had fluid in your lungs?": "past fluid in lungs",  # E_5
}

# Value meanings whose English translation in the release is plainly wrong; the French original
# is unambiguous (palais = palate, ischio-jambier = hamstring, déchirante = tearing, lancinante =
# lancinating, Caraïbes = Caribbean). A wrong word would teach the model, and mislead a
# clinician reading the prompt, for no benefit, so the meaning is corrected when decoded.
VALUE_FIXES: dict[str, str] = {
    "palace": "palate",
    "ischio jambier(R)": "hamstring(R)",
    "ischio jambier(L)": "hamstring(L)",
    "heartbreaking": "tearing",
    "haunting": "lancinating",
    "Caraibes": "Caribbean",
}

# Question openings that carry no clinical content once the answer is known to be "yes".
_LEAD_INS = re.compile(
    r"^(?:do you currently,? or did you ever,? have|have you ever been diagnosed with|"
    r"have you been diagnosed with|have you ever had|have you recently had|have you had|"
    r"have you noticed|do you suffer from|do you have|do you feel|are you currently|"
    r"have you ever|have you|do you|did you|are you|are your|is your|do your|does the|is the|"
    r"does your)\s+",
    re.IGNORECASE,
)
_ARTICLE = re.compile(r"^(?:a|an|any|the)\s+", re.IGNORECASE)
_PARENTHETICAL = re.compile(r"\s*\([^()]*\)")


def derive_finding_name(question: str) -> str:
    """A short finding name for a question missing from :data:`SHORT_NAMES`.

    Drops the question's lead-in ("Do you have"), a leading article, parentheticals and the
    final "?"/":"; e.g. "Do you have a cough (dry or wet)?" becomes "cough". Returns the
    trimmed question itself if nothing would remain.
    """
    text = _PARENTHETICAL.sub("", question.strip()).strip().rstrip("?:. ").strip()
    short = _ARTICLE.sub("", _LEAD_INS.sub("", text)).strip()
    if not short:
        return text or question.strip()
    # Lower-case the first letter unless it starts an acronym ("HIV", "COPD").
    if not (len(short) > 1 and short[1].isupper()):
        short = short[0].lower() + short[1:]
    return short


def finding_name(question: str) -> str:
    """The compact finding name for a DDXPlus question (curated, else derived)."""
    return SHORT_NAMES.get(question.strip()) or derive_finding_name(question)
